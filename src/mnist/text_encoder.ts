/**
 * A small FROZEN text encoder for the embedded default, standing in for CLIP: no training, every
 * weight drawn from a seeded PRNG, computed in plain JS float64 (no tfjs), so the same prompt gives
 * the same float32 embedding on every run, machine and tfjs backend.
 *
 * Design (CLIP-like, miniature):
 *   - Word-level tokenizer over a fixed vocabulary (VOCAB). Lower-cases, splits on whitespace, strips
 *     surrounding punctuation (.,;:!?"'()). An unknown word is an error that names it; so is a prompt
 *     longer than EMBED_LENGTH - 2 words.
 *   - Sequence: BOS, the words, EOS, then PAD up to EMBED_LENGTH = 8 (CLIP pads after its EOS too).
 *     The null prompt "" is BOS, EOS, 6 × PAD.
 *   - x = token embedding (N(0,1), [V, D]) + sinusoidal position embedding (Transformer style, [L, D]).
 *   - One pre-LayerNorm transformer block: 2-head CAUSAL self-attention (as CLIP's text model: a
 *     token sees itself and earlier tokens, so EOS and PADs summarise the whole prompt), then an MLP
 *     D → 4D → D with quick_gelu (x·σ(1.702x), CLIP's activation). Weights N(0, 1/fan_in), biases 0,
 *     residual connections, so each output token keeps its word's identity and adds context.
 *   - Final LayerNorm (no affine), like CLIP's final_layer_norm: every token vector has mean 0 and
 *     variance 1 over D, a scale a UNet's cross-attention is used to.
 *   Output per prompt: [EMBED_LENGTH = 8, EMBED_DIM = 32] float32 (the "last hidden state").
 */
import { normalSampler } from '../util/rng.ts';

export const EMBED_LENGTH = 8;
export const EMBED_DIM = 32;
export const ENCODER_SEED = 20240;
export const NUM_HEADS = 2;

export const PAD = '<pad>';
export const BOS = '<bos>';
export const EOS = '<eos>';
/** Fixed vocabulary: ids are the positions. Never reorder (it would change every embedding). */
export const VOCAB: readonly string[] = Object.freeze([
  PAD, BOS, EOS,
  'a', 'an', 'the', 'handwritten', 'digit', 'number', 'of',
  'thin', 'regular', 'bold', 'left-slanted', 'upright', 'right-slanted',
  'zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine',
]);
export const PAD_ID = 0;
export const BOS_ID = 1;
export const EOS_ID = 2;
const WORD_ID = new Map(VOCAB.map((w, i) => [w, i]));

/** Token ids [EMBED_LENGTH] of a prompt: BOS, words, EOS, PADs. */
export function tokenize(prompt: string): Int32Array {
  const words = prompt
    .toLowerCase()
    .split(/\s+/)
    .map((w) => w.replace(/^[.,;:!?"'()]+|[.,;:!?"'()]+$/g, ''))
    .filter((w) => w.length > 0);
  if (words.length > EMBED_LENGTH - 2) {
    throw new Error(`prompt "${prompt}" has ${words.length} words; the text encoder takes at most ${EMBED_LENGTH - 2}`);
  }
  const ids = new Int32Array(EMBED_LENGTH).fill(PAD_ID);
  ids[0] = BOS_ID;
  words.forEach((w, i) => {
    const id = WORD_ID.get(w);
    if (id === undefined || id <= EOS_ID) {
      throw new Error(`unknown word '${w}' in prompt "${prompt}" (the text encoder knows: ${VOCAB.slice(EOS_ID + 1).join(', ')})`);
    }
    ids[i + 1] = id;
  });
  ids[words.length + 1] = EOS_ID;
  return ids;
}

type Mat = Float64Array; // row-major

interface Weights {
  tok: Mat; // [V, D]
  pos: Mat; // [L, D]
  wq: Mat; wk: Mat; wv: Mat; wo: Mat; // [D, D], y = x W
  w1: Mat; // [D, 4D]
  w2: Mat; // [4D, D]
}

function gaussian(n: number, std: number, next: () => number): Mat {
  const m = new Float64Array(n);
  for (let i = 0; i < n; i++) m[i] = next() * std;
  return m;
}

function makeWeights(seed: number): Weights {
  const next = normalSampler(seed);
  const D = EMBED_DIM, H = 4 * D, L = EMBED_LENGTH;
  const tok = gaussian(VOCAB.length * D, 1, next);
  const pos = new Float64Array(L * D);
  for (let p = 0; p < L; p++) {
    for (let i = 0; i < D / 2; i++) {
      const angle = p / Math.pow(10000, (2 * i) / D);
      pos[p * D + 2 * i] = Math.sin(angle);
      pos[p * D + 2 * i + 1] = Math.cos(angle);
    }
  }
  return {
    tok, pos,
    wq: gaussian(D * D, 1 / Math.sqrt(D), next),
    wk: gaussian(D * D, 1 / Math.sqrt(D), next),
    wv: gaussian(D * D, 1 / Math.sqrt(D), next),
    wo: gaussian(D * D, 1 / Math.sqrt(D), next),
    w1: gaussian(D * H, 1 / Math.sqrt(D), next),
    w2: gaussian(H * D, 1 / Math.sqrt(H), next),
  };
}

/** y[L, out] = x[L, in] · w[in, out] */
function matmul(x: Mat, w: Mat, rows: number, inDim: number, outDim: number): Mat {
  const y = new Float64Array(rows * outDim);
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < inDim; k++) {
      const a = x[r * inDim + k]!;
      if (a === 0) continue;
      for (let c = 0; c < outDim; c++) y[r * outDim + c]! += a * w[k * outDim + c]!;
    }
  }
  return y;
}

function layerNorm(x: Mat, rows: number, dim: number): Mat {
  const y = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let mean = 0;
    for (let c = 0; c < dim; c++) mean += x[r * dim + c]!;
    mean /= dim;
    let v = 0;
    for (let c = 0; c < dim; c++) v += (x[r * dim + c]! - mean) ** 2;
    const inv = 1 / Math.sqrt(v / dim + 1e-5);
    for (let c = 0; c < dim; c++) y[r * dim + c] = (x[r * dim + c]! - mean) * inv;
  }
  return y;
}

export interface PromptEncoder {
  readonly seed: number;
  readonly shape: [number, number];
  /** [L, D] float32 for one prompt. */
  encodeOne(prompt: string): Float32Array;
  /** [n, L, D] float32, prompts in order. */
  encode(prompts: readonly string[]): Float32Array;
}

/** The frozen encoder for a seed (default ENCODER_SEED, the one data/embeddings.parquet was made with). */
export function createPromptEncoder(seed: number = ENCODER_SEED): PromptEncoder {
  const w = makeWeights(seed);
  const L = EMBED_LENGTH, D = EMBED_DIM, H = 4 * D, dh = D / NUM_HEADS;
  const encodeOne = (prompt: string): Float32Array => {
    const ids = tokenize(prompt);
    const x = new Float64Array(L * D);
    for (let p = 0; p < L; p++) for (let c = 0; c < D; c++) x[p * D + c] = w.tok[ids[p]! * D + c]! + w.pos[p * D + c]!;
    // causal multi-head self-attention (pre-LN)
    const h = layerNorm(x, L, D);
    const q = matmul(h, w.wq, L, D, D), k = matmul(h, w.wk, L, D, D), v = matmul(h, w.wv, L, D, D);
    const att = new Float64Array(L * D);
    const scores = new Float64Array(L);
    for (let head = 0; head < NUM_HEADS; head++) {
      const off = head * dh;
      for (let i = 0; i < L; i++) {
        let max = -Infinity;
        for (let j = 0; j <= i; j++) {
          let s = 0;
          for (let c = 0; c < dh; c++) s += q[i * D + off + c]! * k[j * D + off + c]!;
          scores[j] = s / Math.sqrt(dh);
          if (scores[j]! > max) max = scores[j]!;
        }
        let sum = 0;
        for (let j = 0; j <= i; j++) { scores[j] = Math.exp(scores[j]! - max); sum += scores[j]!; }
        for (let j = 0; j <= i; j++) {
          const a = scores[j]! / sum;
          for (let c = 0; c < dh; c++) att[i * D + off + c]! += a * v[j * D + off + c]!;
        }
      }
    }
    const o = matmul(att, w.wo, L, D, D);
    for (let i = 0; i < x.length; i++) x[i]! += o[i]!;
    // MLP with quick_gelu (pre-LN)
    const m = matmul(layerNorm(x, L, D), w.w1, L, D, H);
    for (let i = 0; i < m.length; i++) m[i] = m[i]! / (1 + Math.exp(-1.702 * m[i]!));
    const m2 = matmul(m, w.w2, L, H, D);
    for (let i = 0; i < x.length; i++) x[i]! += m2[i]!;
    return Float32Array.from(layerNorm(x, L, D));
  };
  return {
    seed,
    shape: [L, D],
    encodeOne,
    encode(prompts) {
      const out = new Float32Array(prompts.length * L * D);
      prompts.forEach((p, i) => out.set(encodeOne(p), i * L * D));
      return out;
    },
  };
}

/** A description of the encoder for file metadata. */
export function encoderDescription(seed: number = ENCODER_SEED): Record<string, unknown> {
  return {
    name: 'swiftbrush-mnist-frozen-text-encoder',
    seed,
    embed_length: EMBED_LENGTH,
    embed_dim: EMBED_DIM,
    num_heads: NUM_HEADS,
    layers: 1,
    causal: true,
    vocab: VOCAB,
  };
}
