/**
 * Where a UNet load's time goes, phase by phase, on the native backend:
 * `node --import tsx bench/load_breakdown.ts UNET_DIR [VARIANT]` (warm the page cache first; SD-sized
 * models under `flock /tmp/bigmem.lock`). Prints seconds per phase: header parse and key check,
 * positioned reads alone, reads as the loader does them (F16 widened), tensor + layout transpose,
 * `tf.variable`, then one whole `fromPretrained` for comparison.
 */
import { openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { initBackend } from '../src/backend.ts';
import { tf } from '../src/tf.ts';
import { UNet2DConditionModel, WEIGHTS_NAME } from '../src/models/unet_2d_condition.ts';
import { WeightFiles, readFloat32, checkAgainst, readBufferFor } from '../src/models/weights.ts';
import { torchToTf } from '../src/models/params.ts';
const dir = process.argv[2]!; const variant = process.argv[3] || undefined;
await initBackend('tensorflow');
const ms = (a: number) => performance.now() - a;
const T: Record<string, number> = {};
const add = (k: string, v: number) => (T[k] = (T[k] ?? 0) + v / 1000);
let a = performance.now();
const raw = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
const specs = UNet2DConditionModel.parameterSpecs(raw, 'config.json');
const weights = WeightFiles.open(dir, WEIGHTS_NAME, variant);
checkAgainst(specs, weights);
add('open: header parse + key/shape check', ms(a));
// pure positioned reads into one reused buffer
let max = 0; for (const e of weights.entries.values()) max = Math.max(max, e.end - e.begin);
const scratch = new Uint8Array(max); const fds = new Map<string, number>();
a = performance.now();
for (const e of weights.entries.values()) { let fd = fds.get(e.file); if (fd === undefined) fds.set(e.file, fd = openSync(e.file, 'r')); readSync(fd, scratch, 0, e.end - e.begin, e.begin); }
add('positioned reads alone (reused buffer)', ms(a));
const c0 = process.cpuUsage(); const w0 = performance.now();
const buffer = readBufferFor(weights);
const vars: tf.Variable[] = [];
for (const p of specs) {
  a = performance.now(); const data = readFloat32(weights, p.name, buffer); add('read (+ F16 widening)', ms(a));
  a = performance.now(); const v = torchToTf(p.kind, data, p.torchShape); add('tensor + layout transpose (torchToTf)', ms(a));
  a = performance.now(); vars.push(tf.variable(v, false)); v.dispose(); add('tf.variable', ms(a));
}
const c = process.cpuUsage(c0);
T['total of the loop'] = ms(w0) / 1000; T['loop cpu'] = (c.user + c.system) / 1e6;
for (const v of vars) v.dispose(); weights.close();
a = performance.now(); const u = await UNet2DConditionModel.fromPretrained(dir, { trainable: false, variant }); add('fromPretrained, whole', ms(a)); u.dispose();
console.log(JSON.stringify(Object.fromEntries(Object.entries(T).map(([k, v]) => [k, Number(v.toFixed(2))]))));
