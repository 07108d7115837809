/**
 * The 90 prompts of the embedded default: 10 digits × 3 stroke thicknesses × 3 slants, e.g.
 * "a bold right-slanted handwritten seven". Prompt index = digit·9 + thicknessBin·3 + slantBin, which
 * is also the row of the prompt in data/prompts.txt and data/embeddings.parquet (whose extra last row,
 * index 90, is the null prompt "").
 *
 * A train image's prompt is its label plus its MEASURED thickness and slant bins (attributes.ts).
 */
import { measureAttributes, SLANT_WORDS, THICKNESS_WORDS } from './attributes.ts';
import type { MnistSplit } from './dataset.ts';

export const DIGIT_WORDS = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'] as const;
export const NUM_PROMPTS = 90;
/** The unconditional prompt (classifier-free guidance). */
export const NULL_PROMPT = '';

export interface PromptSpec {
  /** digit·9 + thicknessBin·3 + slantBin */
  index: number;
  digit: number;
  /** 0 thin, 1 regular, 2 bold */
  thicknessBin: number;
  /** 0 left-slanted, 1 upright, 2 right-slanted */
  slantBin: number;
  text: string;
}

export function promptIndexOf(digit: number, thicknessBin: number, slantBin: number): number {
  return digit * 9 + thicknessBin * 3 + slantBin;
}

export function promptText(digit: number, thicknessBin: number, slantBin: number): string {
  return `a ${THICKNESS_WORDS[thicknessBin]} ${SLANT_WORDS[slantBin]} handwritten ${DIGIT_WORDS[digit]}`;
}

/** All 90 prompts in index order. */
export const PROMPTS: readonly PromptSpec[] = Object.freeze(
  Array.from({ length: NUM_PROMPTS }, (_, index) => {
    const digit = Math.floor(index / 9);
    const thicknessBin = Math.floor((index % 9) / 3);
    const slantBin = index % 3;
    return Object.freeze({ index, digit, thicknessBin, slantBin, text: promptText(digit, thicknessBin, slantBin) });
  }),
);

const BY_TEXT = new Map(PROMPTS.map((p) => [p.text, p]));

/** The spec of one of the 90 prompt texts (exact text, whitespace-trimmed), or undefined. */
export function parsePrompt(text: string): PromptSpec | undefined {
  return BY_TEXT.get(text.trim().replace(/\s+/g, ' ').toLowerCase());
}

/** Prompt index of every image of a split: its label and its measured thickness and slant bins. */
export function promptIndexOfImages(split: Pick<MnistSplit, 'images' | 'labels'>): Int32Array {
  const { thicknessBin, slantBin } = measureAttributes(split.images);
  const out = new Int32Array(split.labels.length);
  for (let i = 0; i < out.length; i++) out[i] = promptIndexOf(split.labels[i]!, thicknessBin[i]!, slantBin[i]!);
  return out;
}

/** The file data/prompts.txt: the 90 prompts, one per line, in index order. */
export function promptsFileText(): string {
  return PROMPTS.map((p) => p.text).join('\n') + '\n';
}
