/**
 * The mid-scale latent pipeline of docs/scale.md: assembles a diffusers pipeline folder from an
 * SD-shaped UNet (`scale_torch.py OUT 160 32 1 77`: OUT/unet) and an SD-shaped VAE
 * (`make_vae_fixture.py VAE sd`), with the SD 2.1-base DDIM scheduler of test/fixtures, and writes
 * random [77, 1024] prompt embeddings (N(0, 1), seeded; plus the "" null prompt) as Parquet with the
 * project's writer. Files are hard-linked where possible (no copies of the weights).
 *
 *   node --import tsx bench/mid_scale.ts --unet /work/big/w160/unet --vae /work/big/sdvae --out /work/big/midpipe [--prompts 16]
 * writes OUT/pipeline/{unet,vae,scheduler} and OUT/embeddings.parquet.
 */
import { Command } from 'commander';
import { copyFile, link, mkdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { writeEmbeddingParquet } from '../src/streams/writer.ts';
import { mixSeed } from '../src/util/rng.ts';
import { SCHEDULER_FIXTURE_DIR } from '../test/fixtures.ts';

const o = new Command()
  .requiredOption('--unet <dir>', 'UNet folder (config.json + diffusion_pytorch_model.safetensors)')
  .requiredOption('--vae <dir>', 'AutoencoderKL folder')
  .requiredOption('--out <dir>', 'output folder')
  .option('--prompts <n>', 'random prompts besides the null prompt', '16')
  .option('--tokens <n>', 'L', '77')
  .option('--dim <n>', 'D (the UNet cross_attention_dim)', '1024')
  .option('--seed <n>', 'seed of the embeddings', '0')
  .parse()
  .opts<{ unet: string; vae: string; out: string; prompts: string; tokens: string; dim: string; seed: string }>();

const linkOrCopy = (from: string, to: string) => link(from, to).catch(() => copyFile(from, to));
const pipeline = join(resolve(o.out), 'pipeline');
await rm(pipeline, { recursive: true, force: true });
for (const [name, dir, files] of [
  ['unet', o.unet, ['config.json', 'diffusion_pytorch_model.safetensors']],
  ['vae', o.vae, ['config.json', 'diffusion_pytorch_model.safetensors']],
  ['scheduler', SCHEDULER_FIXTURE_DIR, ['scheduler_config.json']],
] as const) {
  await mkdir(join(pipeline, name), { recursive: true });
  for (const f of files) await linkOrCopy(join(dir, f), join(pipeline, name, f));
}

const [n, L, D] = [Number(o.prompts), Number(o.tokens), Number(o.dim)];
const prompts = ['', ...Array.from({ length: n }, (_, i) => `random prompt ${i}`)];
const embeds = new Float32Array(prompts.length * L * D);
// Box–Muller over a seeded xorshift: N(0, 1) values, reproducible without a tensor backend.
let state = mixSeed(Number(o.seed), 1) >>> 0 || 1;
const uniform = () => {
  state ^= state << 13;
  state ^= state >>> 17;
  state ^= state << 5;
  return ((state >>> 0) + 0.5) / 4294967296;
};
for (let i = 0; i < embeds.length; i += 2) {
  const r = Math.sqrt(-2 * Math.log(uniform()));
  const a = 2 * Math.PI * uniform();
  embeds[i] = r * Math.cos(a);
  if (i + 1 < embeds.length) embeds[i + 1] = r * Math.sin(a);
}
await writeEmbeddingParquet(join(resolve(o.out), 'embeddings.parquet'), prompts, embeds, [L, D]);
process.stdout.write(`${pipeline}: unet/, vae/, scheduler/; ${join(resolve(o.out), 'embeddings.parquet')}: ${prompts.length} rows of [${L}, ${D}]\n`);
