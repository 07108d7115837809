/**
 * The first N non-empty prompts' embeddings of a Parquet file as safetensors (`prompt_embeds`
 * [N, L, D] float32), in the order `swiftbrush sample --limit N` uses them: the input of
 * bench/diffusers_pipeline_check.py.
 *
 *   node --import tsx bench/prompt_embeds.ts F.parquet N OUT.safetensors
 */
import { readPromptEmbeddings } from '../src/eval/sampling.ts';
import { writeSafetensors } from '../src/models/safetensors.ts';

const [spec, limit, out] = process.argv.slice(2);
if (!spec || !limit || !out) throw new Error('usage: node --import tsx bench/prompt_embeds.ts F.parquet N OUT.safetensors');
const p = await readPromptEmbeddings(spec, Number(limit));
await writeSafetensors(out, { prompt_embeds: { shape: [p.prompts.length, ...p.shape], data: p.embeds } }, { format: 'pt' });
process.stdout.write(`${out}: prompt_embeds [${p.prompts.length}, ${p.shape.join(', ')}]\n`);
