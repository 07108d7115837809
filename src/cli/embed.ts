/**
 * `swiftbrush embed --prompts FILE --out FILE.parquet`: encodes prompts (one per line) with the
 * embedded default's frozen text encoder (src/mnist/text_encoder.ts) and writes the embedding Parquet
 * that distillation streams. The null prompt "" is appended as the last row (classifier-free
 * guidance needs it) unless --no-null-prompt. `--write-mnist-prompts` first writes the 90 MNIST
 * prompts to the --prompts file (how data/prompts.txt is made).
 */
import type { Command } from 'commander';
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { log } from '../log.ts';
import { int } from './options.ts';
import { createPromptEncoder, ENCODER_SEED, encoderDescription } from '../mnist/text_encoder.ts';
import { NULL_PROMPT, promptsFileText } from '../mnist/prompts.ts';
import { writeEmbeddingParquet } from '../streams/writer.ts';

interface EmbedOptions {
  prompts: string;
  out: string;
  seed: number;
  nullPrompt: boolean;
  writeMnistPrompts?: boolean;
}

/** Prompts of a file: one per line, trailing whitespace and blank lines dropped. */
export function parsePromptsFile(text: string): string[] {
  return text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.length > 0);
}

export async function embedPromptsFile(opts: EmbedOptions): Promise<{ rows: number; shape: [number, number] }> {
  if (opts.writeMnistPrompts) {
    await mkdir(dirname(opts.prompts), { recursive: true });
    await writeFile(opts.prompts, promptsFileText());
    log.info({ path: opts.prompts }, 'wrote the 90 MNIST prompts');
  }
  let text: string;
  try {
    text = await readFile(opts.prompts, 'utf8');
  } catch (err) {
    throw new Error(`cannot read --prompts ${opts.prompts}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const prompts = parsePromptsFile(text);
  if (prompts.length === 0) throw new Error(`--prompts ${opts.prompts} holds no prompts`);
  if (opts.nullPrompt) prompts.push(NULL_PROMPT);
  const encoder = createPromptEncoder(opts.seed);
  const embeds = prompts.map((p, i) => {
    try {
      return encoder.encodeOne(p);
    } catch (err) {
      throw new Error(`${opts.prompts} line ${i + 1}: ${err instanceof Error ? err.message : String(err)}`);
    }
  });
  const flat = new Float32Array(prompts.length * encoder.shape[0] * encoder.shape[1]);
  embeds.forEach((e, i) => flat.set(e, i * e.length));
  await writeEmbeddingParquet(opts.out, prompts, flat, encoder.shape, {
    metadata: { 'swiftbrush.text_encoder': JSON.stringify(encoderDescription(opts.seed)) },
  });
  log.info({ out: opts.out, rows: prompts.length, shape: encoder.shape, seed: opts.seed }, 'wrote embeddings');
  return { rows: prompts.length, shape: encoder.shape };
}

export function register(program: Command): void {
  program
    .command('embed')
    .description('encode prompts (one per line) with the frozen MNIST text encoder into an embedding Parquet (+ the null prompt "")')
    .requiredOption('--prompts <file>', 'prompts, one per line (required)')
    .requiredOption('--out <file>', 'output .parquet (required)')
    .option('--seed <n>', 'text encoder seed (data/embeddings.parquet uses the default)', int(0), ENCODER_SEED)
    .option('--no-null-prompt', 'do not append the null prompt "" as the last row')
    .option('--write-mnist-prompts', 'first write the 90 MNIST prompts to the --prompts file')
    .action(async (opts: EmbedOptions) => {
      const { rows, shape } = await embedPromptsFile(opts);
      process.stdout.write(`${opts.out}: ${rows} rows of [${shape.join(', ')}] float32\n`);
    });
}
