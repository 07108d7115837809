/**
 * What a gradient tape keeps for one UNet forward, by kernel: the tensors tfjs saves for the backward
 * (weights excluded: their clones share the variables' data), and how much of it `src/models/backprop.ts`
 * releases right after the forward because the kernel's gradient needs only shapes.
 *
 *   node --import tsx bench/tape_memory.ts UNET_DIR [--latent 32] [--tokens 77] [--backend tensorflow]
 */
import { Command } from 'commander';
import { tf } from '../src/tf.ts';
import type { Tensor, Tensor3D, Tensor4D } from '../src/tf.ts';
import { initBackend } from '../src/backend.ts';
import { UNet2DConditionModel } from '../src/models/unet_2d_condition.ts';
import { SHAPE_ONLY_GRADIENTS } from '../src/models/backprop.ts';

const o = new Command()
  .argument('<unet>', 'diffusers UNet folder')
  .option('--latent <n>', 'latent height and width', '32')
  .option('--tokens <n>', 'prompt tokens', '77')
  .option('--backend <name>', 'tfjs backend', 'tensorflow')
  .parse();
const opts = o.opts<{ latent: string; tokens: string; backend: string }>();
await initBackend(opts.backend);
const unet = await UNet2DConditionModel.fromPretrained(o.args[0]!, { trainable: true });
const c = unet.config;
const D = Array.isArray(c.cross_attention_dim) ? c.cross_attention_dim[0]! : c.cross_attention_dim;
const n = Number(opts.latent);
const x = tf.randomNormal([1, n, n, c.in_channels]) as Tensor4D;
const ctx = tf.randomNormal([1, Number(opts.tokens), D]) as Tensor3D;

// Record the tape as engine.gradients does (see backprop.ts), without walking it.
type Node = { kernelName: string; saved?: Tensor[] };
const engine = tf.engine() as unknown as { state: { activeTape: Node[] | null }; startTape(): void; endTape(): void; scopedRun<T>(a: () => void, b: () => void, f: () => T): T; tidy<T>(name: string, f: () => T): T };
const y = engine.scopedRun(() => engine.startTape(), () => engine.endTape(), () => engine.tidy('forward', () => tf.sum(unet.forward(x, [999], ctx))));
const tape = engine.state.activeTape ?? [];

const weights = new Set<object>(unet.parameters().map((v) => v.dataId));
const byKernel = new Map<string, { saves: number; bytes: number }>();
const counted = new Set<object>(weights);
const neededElsewhere = new Set<object>(weights);
for (const node of tape) if (!SHAPE_ONLY_GRADIENTS.has(node.kernelName)) for (const t of node.saved ?? []) neededElsewhere.add(t.dataId);
let total = 0;
let shapeOnly = 0;
const shapeOnlyCounted = new Set<object>();
for (const node of tape) {
  for (const t of node.saved ?? []) {
    const row = byKernel.get(node.kernelName) ?? { saves: 0, bytes: 0 };
    row.saves++;
    if (!counted.has(t.dataId)) {
      counted.add(t.dataId);
      row.bytes += t.size * 4;
      total += t.size * 4;
    }
    byKernel.set(node.kernelName, row);
    if (SHAPE_ONLY_GRADIENTS.has(node.kernelName) && !neededElsewhere.has(t.dataId) && !shapeOnlyCounted.has(t.dataId)) {
      shapeOnlyCounted.add(t.dataId);
      shapeOnly += t.size * 4;
    }
  }
}
const mib = (b: number) => (b / 2 ** 20).toFixed(1);
console.log(`${o.args[0]}: ${tape.length} tape nodes; saved activations ${mib(total)} MiB, of which ${mib(shapeOnly)} MiB only shape-only kernels hold (released after the forward)`);
for (const [kernel, row] of [...byKernel].sort((a, b) => b[1].bytes - a[1].bytes)) console.log(`  ${kernel.padEnd(16)} ${String(row.saves).padStart(6)} saves ${mib(row.bytes).padStart(8)} MiB`);
for (const node of tape) for (const t of node.saved ?? []) t.dispose();
engine.state.activeTape = null;
tf.dispose([x, ctx, y]);
unet.dispose();
