import { describe, expect, it } from 'vitest';
import { loadSplit } from '../../src/mnist/dataset.ts';
import { measureAttributes } from '../../src/mnist/attributes.ts';
import { NUM_PROMPTS, PROMPTS, parsePrompt, promptIndexOf, promptIndexOfImages, promptsFileText } from '../../src/mnist/prompts.ts';
import {
  BOS_ID, createPromptEncoder, EMBED_DIM, EMBED_LENGTH, EOS_ID, PAD_ID, tokenize,
} from '../../src/mnist/text_encoder.ts';

describe('prompts', () => {
  it('are the 90 (digit, thickness, slant) combinations in index order', () => {
    expect(PROMPTS.length).toBe(NUM_PROMPTS);
    expect(new Set(PROMPTS.map((p) => p.text)).size).toBe(90);
    expect(PROMPTS[promptIndexOf(7, 2, 2)]!.text).toBe('a bold right-slanted handwritten seven');
    expect(PROMPTS[0]!.text).toBe('a thin left-slanted handwritten zero');
    PROMPTS.forEach((p, i) => expect(p.index).toBe(i));
    expect(parsePrompt('  A bold  right-slanted handwritten seven ')?.index).toBe(71);
    expect(promptsFileText().split('\n').length).toBe(91);
  });

  it('maps train images to the prompt of their label and measured bins', () => {
    const split = loadSplit('train', 200);
    const idx = promptIndexOfImages(split);
    const a = measureAttributes(split.images);
    for (let i = 0; i < split.n; i++) {
      const p = PROMPTS[idx[i]!]!;
      expect([p.digit, p.thicknessBin, p.slantBin]).toEqual([split.labels[i], a.thicknessBin[i], a.slantBin[i]]);
    }
  });
});

describe('text encoder', () => {
  const enc = createPromptEncoder();

  it('tokenizes like CLIP pads: BOS, words, EOS, PADs; the null prompt is BOS EOS PAD…', () => {
    expect(Array.from(tokenize(''))).toEqual([BOS_ID, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]);
    const ids = tokenize('a bold right-slanted handwritten seven');
    expect(ids.length).toBe(EMBED_LENGTH);
    expect(ids[0]).toBe(BOS_ID);
    expect(ids[6]).toBe(EOS_ID);
    expect(ids[7]).toBe(PAD_ID);
    expect(Array.from(tokenize('A Bold, right-slanted handwritten seven.'))).toEqual(Array.from(ids));
  });

  it('refuses unknown words by name and over-long prompts', () => {
    expect(() => tokenize('a bold cursive seven')).toThrow(/unknown word 'cursive'/);
    expect(() => tokenize('a a a a a a a')).toThrow(/at most 6/);
  });

  it('is [8, 32] float32, deterministic, normalised per token, and tells prompts apart', () => {
    expect(EMBED_LENGTH).toBe(8);
    expect(EMBED_DIM).toBe(32);
    const x = enc.encodeOne('a bold right-slanted handwritten seven');
    expect(x).toBeInstanceOf(Float32Array);
    expect(x.length).toBe(8 * 32);
    // golden values: plain-JS float64 math with seeded weights, independent of any tfjs backend
    expect(x[0]).toBeCloseTo(-0.7772407531738281, 6);
    expect(x[1]).toBeCloseTo(1.2838677167892456, 6);
    expect(x[255]).toBeCloseTo(0.7142106294631958, 6);
    expect(Array.from(createPromptEncoder().encodeOne('a bold right-slanted handwritten seven'))).toEqual(Array.from(x));
    for (let t = 0; t < 8; t++) {
      let m = 0, v = 0;
      for (let c = 0; c < 32; c++) m += x[t * 32 + c]!;
      m /= 32;
      for (let c = 0; c < 32; c++) v += (x[t * 32 + c]! - m) ** 2;
      expect(Math.abs(m)).toBeLessThan(1e-5);
      expect(v / 32).toBeCloseTo(1, 3);
    }
    const all = enc.encode([...PROMPTS.map((p) => p.text), '']);
    expect(all.length).toBe(91 * 256);
    for (let a = 0; a < 91; a++) {
      for (let b = a + 1; b < 91; b++) {
        let d = 0;
        for (let i = 0; i < 256; i++) d += (all[a * 256 + i]! - all[b * 256 + i]!) ** 2;
        expect(Math.sqrt(d)).toBeGreaterThan(1);
      }
    }
    expect(Array.from(createPromptEncoder(1).encodeOne(''))).not.toEqual(Array.from(enc.encodeOne('')));
  });
});
