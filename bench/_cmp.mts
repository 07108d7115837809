import { readSafetensors } from '../src/models/safetensors.ts';
const want = (await readSafetensors('/work/big/sd21/io.safetensors')).tensors.get('out')!.data as Float32Array;
for (const f of process.argv.slice(2)) {
  const got = (await readSafetensors(f)).tensors.get('out')!.data as Float32Array;
  let worst = 0, scale = 0;
  for (let i = 0; i < want.length; i++) { worst = Math.max(worst, Math.abs(got[i]! - want[i]!)); scale = Math.max(scale, Math.abs(want[i]!)); }
  console.log(f, 'max abs diff', worst, 'max |out|', scale);
}
