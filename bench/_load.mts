import { initBackend } from '../src/backend.ts';
import { tf } from '../src/tf.ts';
import { UNet2DConditionModel, WEIGHTS_NAME } from '../src/models/unet_2d_condition.ts';
import { WeightFiles } from '../src/models/weights.ts';
import { torchToTf } from '../src/models/params.ts';
await initBackend('tensorflow');
const dir = process.argv[2]!;
const variant = process.argv[3];
const w = WeightFiles.open(dir, WEIGHTS_NAME, variant);
let t = performance.now(); let read = 0, conv = 0;
const specs = UNet2DConditionModel.parameterSpecs(JSON.parse((await import('node:fs')).readFileSync(dir + '/config.json', 'utf8')));
for (const p of specs) {
  let t0 = performance.now();
  const d = w.read(p.name).data as Float32Array;
  read += performance.now() - t0; t0 = performance.now();
  const v = torchToTf(p.kind, d, p.torchShape); v.dataSync(); v.dispose();
  conv += performance.now() - t0;
}
console.log({ read_s: read / 1000, convert_s: conv / 1000, total: (performance.now() - t) / 1000, rss: process.memoryUsage().rss / 2 ** 30 });
t = performance.now();
const u = await UNet2DConditionModel.fromPretrained(dir, { variant });
console.log({ fromPretrained_s: (performance.now() - t) / 1000, rss: process.memoryUsage().rss / 2 ** 30, peak: process.resourceUsage().maxRSS / 2 ** 20 });
