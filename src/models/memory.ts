/**
 * What a run will hold in memory, worked out from a UNet's config.json and its weight files'
 * headers (no tensor is read, no model built), against what the backend can hold:
 * wasm's heap is at most 4 GiB (32-bit addresses), the native backend and cpu have the machine's
 * memory. Everything is float32 on the backend, whatever the file's dtype (F16/BF16 are widened).
 */
import { totalmem } from 'node:os';
import { join } from 'node:path';
import { UNet2DConditionModel, parseUNetConfig, readUNetConfig, CONFIG_NAME, WEIGHTS_NAME, type UNetConfig } from './unet_2d_condition.ts';
import { WeightFiles } from './weights.ts';
import { BYTES } from './safetensors.ts';
import type { ParamSpec } from './params.ts';

const F32 = 4;
export const GIB = 1024 ** 3;
/** tfjs-backend-wasm's heap: a 32-bit WebAssembly memory, 4 GiB at most. */
export const WASM_HEAP_BYTES = 4 * GIB;

export interface UNetWeightsInfo {
  dir: string;
  config: UNetConfig;
  /** Parameters by the config (what the model will create). */
  specs: ParamSpec[];
  /** Parameters in the weight files' headers. */
  fileParams: number;
  /** Bytes of tensor data in the files (as stored: F16 files are half of float32). */
  fileBytes: number;
  files: string[];
  dtypes: string[];
}

/** Reads a UNet folder's config.json and weight headers only. */
export async function inspectUNetWeights(dir: string, variant?: string): Promise<UNetWeightsInfo> {
  const configPath = join(dir, CONFIG_NAME);
  const raw = await readUNetConfig(configPath);
  const config = parseUNetConfig(raw, configPath);
  const specs = UNet2DConditionModel.parameterSpecs(raw, configPath);
  const weights = WeightFiles.open(dir, WEIGHTS_NAME, variant);
  weights.close();
  let fileParams = 0;
  let fileBytes = 0;
  const dtypes = new Set<string>();
  for (const e of weights.entries.values()) {
    const n = e.shape.reduce((a, b) => a * b, 1);
    fileParams += n;
    fileBytes += n * BYTES[e.dtype];
    dtypes.add(e.dtype);
  }
  return { dir, config, specs, fileParams, fileBytes, files: weights.files, dtypes: [...dtypes].sort() };
}

export function countParams(specs: ParamSpec[]): number {
  return specs.reduce((a, p) => a + p.torchShape.reduce((x, y) => x * y, 1), 0);
}

/** Parameters of PEFT LoRA adapters of rank r on the target modules (Linear: r·in + out·r; Conv2d: r·in·k² + out·r). */
export function loraParams(specs: ParamSpec[], rank: number, targets: string[]): number {
  let n = 0;
  for (const p of specs) {
    if (!p.name.endsWith('.weight') || p.kind === 'vector') continue;
    const module = p.name.slice(0, -'.weight'.length);
    if (!targets.some((t) => module === t || module.endsWith(`.${t}`))) continue;
    const [out, inp, kh = 1, kw = 1] = p.torchShape as [number, number, number?, number?];
    n += rank * inp * kh * kw + out * rank;
  }
  return n;
}

/**
 * Float32 values one UNet forward at batch 1 produces (and, under a gradient tape, keeps for the
 * backward), walked block by block from the config: per resnet ~4 values per input channel and ~9
 * per output channel and pixel (norms, activations, convolutions, the residual); per transformer
 * layer ~30 per channel and token plus the attention scores (3 tensors of heads × N × N for
 * self-attention, heads × N × L for cross-attention; `attentionScores` false: none, as a
 * memory-efficient attention kernel keeps them). An estimate, checked against measurements in docs/scale.md.
 */
export function forwardActivationValues(config: UNetConfig, latent: [number, number], tokens: number, attentionScores = true): number {
  const c = config;
  const n = c.block_out_channels.length;
  const per = <T>(v: T | T[], i: number): T => (Array.isArray(v) ? v[i]! : v);
  const heads = (i: number) => per(c.num_attention_heads ?? c.attention_head_dim, i);
  const resnet = (px: number, cin: number, cout: number) => px * (4 * cin + 9 * cout);
  const transformer = (px: number, ch: number, i: number) => {
    const layers = per(c.transformer_layers_per_block, i);
    const scores = attentionScores ? 3 * heads(i) * px * (px + tokens) : 0;
    return layers * (px * ch * 30 + scores) + px * ch * 6;
  };
  let [h, w] = latent;
  let total = h * w * (c.in_channels + c.block_out_channels[0]!);
  let ch = c.block_out_channels[0]!;
  const skips: number[] = [ch];
  c.down_block_types.forEach((type, i) => {
    const out = c.block_out_channels[i]!;
    for (let l = 0; l < per(c.layers_per_block, i); l++) {
      total += resnet(h * w, ch, out);
      ch = out;
      if (type === 'CrossAttnDownBlock2D') total += transformer(h * w, ch, i);
      skips.push(ch);
    }
    if (i < n - 1) {
      h = Math.ceil(h / 2);
      w = Math.ceil(w / 2);
      total += h * w * ch * 2;
      skips.push(ch);
    }
  });
  if (c.mid_block_type) total += 2 * resnet(h * w, ch, ch) + transformer(h * w, ch, n - 1);
  const rev = [...c.block_out_channels].reverse();
  c.up_block_types.forEach((type, i) => {
    const out = rev[i]!;
    const level = n - 1 - i;
    for (let l = 0; l < per(c.layers_per_block, level) + 1; l++) {
      const skip = skips.pop() ?? out;
      total += h * w * (ch + skip) + resnet(h * w, ch + skip, out);
      ch = out;
      if (type === 'CrossAttnUpBlock2D') total += transformer(h * w, ch, level);
    }
    if (i < n - 1) {
      h *= 2;
      w *= 2;
      total += h * w * ch * 3;
    }
  });
  return total + h * w * (ch * 3 + c.out_channels);
}

export interface MemoryItem {
  what: string;
  bytes: number;
  detail: string;
}

export interface MemoryPlan {
  items: MemoryItem[];
  total: number;
}

export interface DistillPlanOptions {
  specs: ParamSpec[];
  config: UNetConfig;
  batchSize: number;
  gradAccum: number;
  emaDecay: number;
  loraRank: number;
  loraTargets: string[];
  tokens: number;
}

function latentOf(config: UNetConfig): [number, number] {
  const size = config.sample_size;
  if (typeof size !== 'number') throw new Error(`the UNet config needs an integer 'sample_size' (got ${JSON.stringify(size)})`);
  return [size, size];
}

/**
 * A SwiftBrush run holds the frozen teacher, the student, its EMA, Adam's two moments, the student's
 * gradients (twice with gradient accumulation: the window's sum and the micro-batch's), the LoRA
 * adapter with its gradients and moments, and the activations of its largest pass: the two CFG
 * teacher passes at 2B without a tape, or a forward+backward at B (saved forward values plus
 * gradients of the same order, ×2).
 */
export function distillMemoryPlan(o: DistillPlanOptions): MemoryPlan {
  const P = countParams(o.specs);
  const Pl = loraParams(o.specs, o.loraRank, o.loraTargets);
  const gib = (bytes: number) => `${(bytes / GIB).toFixed(2)} GiB`;
  const act = forwardActivationValues(o.config, latentOf(o.config), o.tokens);
  // Both the teachers' CFG passes (2B, no tape) and a forward+backward at B come to about 2B forwards.
  const activations = 2 * o.batchSize * act * F32;
  const items: MemoryItem[] = [
    { what: 'teacher', bytes: P * F32, detail: `${P.toLocaleString('en')} parameters, float32` },
    { what: 'student', bytes: P * F32, detail: 'a copy of the teacher, trained' },
    ...(o.emaDecay > 0 ? [{ what: 'student EMA', bytes: P * F32, detail: `decay ${o.emaDecay}` }] : []),
    { what: 'Adam moments (student)', bytes: 2 * P * F32, detail: 'exp_avg and exp_avg_sq' },
    { what: 'gradients (student)', bytes: (o.gradAccum > 1 ? 2 : 1) * P * F32, detail: o.gradAccum > 1 ? `micro-batch + window sum (--grad-accum ${o.gradAccum})` : 'one set' },
    { what: 'LoRA (weights, gradients, Adam)', bytes: 4 * Pl * F32, detail: `${Pl.toLocaleString('en')} parameters, rank ${o.loraRank} on ${o.loraTargets.join(',')}` },
    { what: 'activations (estimate)', bytes: activations, detail: `batch ${o.batchSize} at ${latentOf(o.config).join('x')} latents, ${o.tokens} tokens: ${gib(act * F32)} per sample per forward` },
  ];
  return { items, total: items.reduce((a, i) => a + i.bytes, 0) };
}

/** One forward pass without a tape (`unet-forward`): the weights and one batch's activations. */
export function forwardMemoryPlan(specs: ParamSpec[], config: UNetConfig, batch: number, latent: [number, number], tokens: number): MemoryPlan {
  const P = countParams(specs);
  const items: MemoryItem[] = [
    { what: 'UNet weights', bytes: P * F32, detail: `${P.toLocaleString('en')} parameters, float32` },
    { what: 'activations (estimate)', bytes: batch * forwardActivationValues(config, latent, tokens) * F32, detail: `batch ${batch} at ${latent.join('x')}, ${tokens} tokens; all kept, as under a gradient tape: an upper bound for a plain forward` },
  ];
  return { items, total: items.reduce((a, i) => a + i.bytes, 0) };
}

export interface MemoryLimit {
  bytes: number;
  description: string;
}

/** What the backend can hold: wasm's 4 GiB heap, else the machine's memory. */
export function backendMemoryLimit(backend: string): MemoryLimit {
  if (backend === 'wasm') return { bytes: WASM_HEAP_BYTES, description: "the wasm backend's heap (4 GiB at most)" };
  return { bytes: totalmem(), description: `this machine's memory (${(totalmem() / GIB).toFixed(1)} GiB)` };
}

export function formatPlan(plan: MemoryPlan, limit: MemoryLimit): string {
  const gib = (b: number) => `${(b / GIB).toFixed(2).padStart(7)} GiB`;
  const width = Math.max(...plan.items.map((i) => i.what.length), 5);
  const lines = plan.items.map((i) => `  ${i.what.padEnd(width)} ${gib(i.bytes)}  ${i.detail}`);
  lines.push(`  ${'total'.padEnd(width)} ${gib(plan.total)}  against ${limit.description}: ${plan.total <= limit.bytes ? 'fits' : `does NOT fit (${(plan.total / limit.bytes).toFixed(1)}x)`}`);
  return lines.join('\n');
}

/** The advice every "does not fit" / "ran out" message ends with. */
export const NATIVE_ADVICE = 'use the native backend (build it once with `npm run native:build`, then --backend tensorflow; it has the machine\'s memory) or a GPU host (@tensorflow/tfjs-node-gpu)';

/**
 * Refuses, before anything is loaded, a run that cannot fit the wasm heap (weights, optimiser
 * state and the activation estimate); on other backends the plan is only reported.
 */
export function refuseIfTooBigForWasm(plan: MemoryPlan, backend: string, what: string): void {
  if (backend !== 'wasm' || plan.total <= WASM_HEAP_BYTES) return;
  throw new Error(`${what} needs about ${(plan.total / GIB).toFixed(2)} GiB, more than the wasm backend's 4 GiB heap: ${NATIVE_ADVICE}\n${formatPlan(plan, backendMemoryLimit('wasm'))}`);
}
