import { describe, expect, it } from 'vitest';
import { mkdtemp, readFile, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as pw from 'parquet-wasm';
import { tableFromIPC } from 'apache-arrow';
import { embedPromptsFile, parsePromptsFile } from '../../src/cli/embed.ts';
import { createPromptEncoder } from '../../src/mnist/text_encoder.ts';
import { PROMPTS, promptsFileText } from '../../src/mnist/prompts.ts';

async function readBack(path: string) {
  const table = tableFromIPC(pw.readParquet(new Uint8Array(await readFile(path))).intoIPCStream());
  const prompts = table.getChild('prompt')!.toArray() as string[];
  const embeds = table.getChild('prompt_embeds')!;
  const rows = Array.from({ length: table.numRows }, (_, i) => Float32Array.from(embeds.get(i)!.toArray() as Float32Array));
  return { prompts: Array.from(prompts), rows, meta: table.schema.metadata };
}

describe('swiftbrush embed', () => {
  it('writes the prompts plus the null prompt with the encoder output', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sb-embed-'));
    try {
      await writeFile(join(dir, 'p.txt'), 'a thin upright handwritten one\r\n\n a bold left-slanted handwritten two \n');
      const res = await embedPromptsFile({ prompts: join(dir, 'p.txt'), out: join(dir, 'e.parquet'), seed: 20240, nullPrompt: true });
      expect(res).toEqual({ rows: 3, shape: [8, 32] });
      const back = await readBack(join(dir, 'e.parquet'));
      expect(back.prompts).toEqual(['a thin upright handwritten one', 'a bold left-slanted handwritten two', '']);
      expect(back.meta.get('swiftbrush.embedding_shape')).toBe('[8,32]');
      const enc = createPromptEncoder();
      back.prompts.forEach((p, i) => expect(Array.from(back.rows[i]!)).toEqual(Array.from(enc.encodeOne(p))));
      await writeFile(join(dir, 'bad.txt'), 'a thin upright handwritten one\na fat seven\n');
      await expect(embedPromptsFile({ prompts: join(dir, 'bad.txt'), out: join(dir, 'x.parquet'), seed: 1, nullPrompt: true })).rejects.toThrow(/line 2: unknown word 'fat'/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('the shipped data/prompts.txt and data/embeddings.parquet are the 90 prompts + "" with the default encoder', async () => {
    const text = await readFile(new URL('../../data/prompts.txt', import.meta.url), 'utf8');
    expect(text).toBe(promptsFileText());
    expect(parsePromptsFile(text)).toEqual(PROMPTS.map((p) => p.text));
    const back = await readBack(new URL('../../data/embeddings.parquet', import.meta.url).pathname);
    expect(back.prompts.length).toBe(91);
    expect(back.prompts[90]).toBe('');
    const enc = createPromptEncoder();
    for (const i of [0, 71, 90]) expect(Array.from(back.rows[i]!)).toEqual(Array.from(enc.encodeOne(back.prompts[i]!)));
  });
});
