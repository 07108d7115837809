/**
 * Stroke thickness and slant, measured from pixels, so that prompts can ask for them and generated
 * images can be checked against them.
 *
 * Both attributes work on ANY images in the model range [-1, 1] (real or generated, possibly noisy):
 *   1. clamp to [-1, 1] (NaN counts as background), map to p ∈ [0, 1];
 *   2. binarise: ink = p > 0.5 (i.e. model value > 0);
 *   3. thickness = ink mass / stroke length, where ink mass = number of ink pixels and stroke length =
 *      number of pixels of the Zhang-Suen skeleton of the ink (8-connected one-pixel-wide thinning,
 *      Zhang & Suen 1984). Units: pixels of width. An image with no ink has thickness 0.
 *   4. slant = -mu11 / mu02: the shear dx/dy of the ink mask from its second-order central moments
 *      (x = column, y = row growing downwards; the sign is flipped so that POSITIVE = the top leans to
 *      the RIGHT). It is tan(lean angle from vertical), the quantity classic MNIST deskewing removes.
 *      An image with mu02 = 0 (no ink, or a single row) has slant 0.
 *
 * Bins are tertiles of the TRAIN split (the 9,000 digits of dataset.ts), over all digits together, so
 * "bold" means the same stroke width for every digit: value < t1 → bin 0, t1 ≤ value < t2 → bin 1,
 * value ≥ t2 → bin 2. The thresholds are the constants below; `computeThresholds` recomputes them
 * (test/mnist/attributes.test.ts checks that they match the train split).
 *
 * Train-split values: thickness tertiles 2.410 / 3.048 px (range 1.02-13.5), slant tertiles
 * 0.0117 / 0.2552 (most handwriting leans right, so "upright" is a near-vertical band and
 * "left-slanted" includes the barely-left and the exactly vertical: 0.0117 is a lean of 0.7°). Every (digit, thickness, slant) cell of the train split
 * has ≥ 23 images (the rarest: bold right-slanted nines).
 */
import { IMAGE_PIXELS, IMAGE_SIZE } from './dataset.ts';

export const THICKNESS_WORDS = ['thin', 'regular', 'bold'] as const;
export const SLANT_WORDS = ['left-slanted', 'upright', 'right-slanted'] as const;

/** Tertiles of thickness over the train split (computed by `computeThresholds`, quantiles 1/3 and 2/3). */
export const THICKNESS_THRESHOLDS: readonly [number, number] = [2.41025641025641, 3.0476190476190474];
/** Tertiles of slant over the train split. */
export const SLANT_THRESHOLDS: readonly [number, number] = [0.011660180423250666, 0.25516244062217835];

export interface Attributes {
  /** Ink pixels / skeleton pixels, per image. */
  thickness: Float64Array;
  /** Shear dx/dy, positive = leaning right, per image. */
  slant: Float64Array;
  /** 0 thin, 1 regular, 2 bold. */
  thicknessBin: Int32Array;
  /** 0 left-slanted, 1 upright, 2 right-slanted. */
  slantBin: Int32Array;
}

const S = IMAGE_SIZE;
const P = S + 2; // padded side: a zero border so that every pixel has 8 neighbours

/** Binary ink mask of image i (padded [P*P], 1 = ink) of a [N,28,28,1] batch in [-1, 1]. */
function inkMask(images: Float32Array, i: number, out: Uint8Array): number {
  out.fill(0);
  let count = 0;
  const base = i * IMAGE_PIXELS;
  for (let r = 0; r < S; r++) {
    for (let c = 0; c < S; c++) {
      const v = images[base + r * S + c]!;
      // v > 0 ⇔ clamp(v) > 0 ⇔ (clamp(v)+1)/2 > 0.5; NaN compares false → background.
      if (v > 0) {
        out[(r + 1) * P + (c + 1)] = 1;
        count++;
      }
    }
  }
  return count;
}

/**
 * Zhang-Suen thinning in place on a zero-bordered [P*P] binary mask; returns the skeleton's pixel
 * count. Two sub-iterations per pass, each deleting (simultaneously) the contour pixels p1 with
 * 2 ≤ B(p1) ≤ 6 neighbours, exactly one 0→1 transition A(p1) in the cycle p2…p9, and
 * p2·p4·p6 = 0, p4·p6·p8 = 0 (first) or p2·p4·p8 = 0, p2·p6·p8 = 0 (second).
 */
export function zhangSuen(mask: Uint8Array, side: number = P): number {
  const del: number[] = [];
  let changed = true;
  while (changed) {
    changed = false;
    for (let step = 0; step < 2; step++) {
      del.length = 0;
      for (let r = 1; r < side - 1; r++) {
        for (let c = 1; c < side - 1; c++) {
          const k = r * side + c;
          if (!mask[k]) continue;
          const p2 = mask[k - side]!, p3 = mask[k - side + 1]!, p4 = mask[k + 1]!, p5 = mask[k + side + 1]!;
          const p6 = mask[k + side]!, p7 = mask[k + side - 1]!, p8 = mask[k - 1]!, p9 = mask[k - side - 1]!;
          const b = p2 + p3 + p4 + p5 + p6 + p7 + p8 + p9;
          if (b < 2 || b > 6) continue;
          const a =
            (p2 === 0 && p3 === 1 ? 1 : 0) + (p3 === 0 && p4 === 1 ? 1 : 0) + (p4 === 0 && p5 === 1 ? 1 : 0) +
            (p5 === 0 && p6 === 1 ? 1 : 0) + (p6 === 0 && p7 === 1 ? 1 : 0) + (p7 === 0 && p8 === 1 ? 1 : 0) +
            (p8 === 0 && p9 === 1 ? 1 : 0) + (p9 === 0 && p2 === 1 ? 1 : 0);
          if (a !== 1) continue;
          if (step === 0 ? p2 * p4 * p6 !== 0 || p4 * p6 * p8 !== 0 : p2 * p4 * p8 !== 0 || p2 * p6 * p8 !== 0) continue;
          del.push(k);
        }
      }
      for (const k of del) mask[k] = 0;
      if (del.length > 0) changed = true;
    }
  }
  let n = 0;
  for (let k = 0; k < mask.length; k++) n += mask[k]!;
  return n;
}

/** Shear -mu11/mu02 of a padded binary mask (0 when undefined). */
function maskSlant(mask: Uint8Array): number {
  let m = 0, sx = 0, sy = 0;
  for (let r = 1; r <= S; r++) for (let c = 1; c <= S; c++) if (mask[r * P + c]) { m++; sx += c; sy += r; }
  if (m === 0) return 0;
  const cx = sx / m, cy = sy / m;
  let mu11 = 0, mu02 = 0;
  for (let r = 1; r <= S; r++) {
    for (let c = 1; c <= S; c++) {
      if (!mask[r * P + c]) continue;
      const dy = r - cy;
      mu11 += (c - cx) * dy;
      mu02 += dy * dy;
    }
  }
  return mu02 > 0 && mu11 !== 0 ? -mu11 / mu02 : 0;
}

function bin(value: number, t: readonly [number, number]): number {
  return value < t[0] ? 0 : value < t[1] ? 1 : 2;
}

/** Raw thickness and slant of a batch [N,28,28,1] in [-1, 1] (N inferred from the length). */
export function measureRaw(images: Float32Array): { thickness: Float64Array; slant: Float64Array } {
  if (images.length % IMAGE_PIXELS !== 0) throw new Error(`images: length ${images.length} is not a multiple of 28*28`);
  const n = images.length / IMAGE_PIXELS;
  const thickness = new Float64Array(n);
  const slant = new Float64Array(n);
  const mask = new Uint8Array(P * P);
  for (let i = 0; i < n; i++) {
    const ink = inkMask(images, i, mask);
    slant[i] = maskSlant(mask);
    const length = ink === 0 ? 0 : zhangSuen(mask);
    thickness[i] = length === 0 ? 0 : ink / length;
  }
  return { thickness, slant };
}

/** Thickness, slant and their tertile bins for a batch [N,28,28,1] in [-1, 1]. */
export function measureAttributes(
  images: Float32Array,
  thresholds: { thickness: readonly [number, number]; slant: readonly [number, number] } = { thickness: THICKNESS_THRESHOLDS, slant: SLANT_THRESHOLDS },
): Attributes {
  const { thickness, slant } = measureRaw(images);
  const n = thickness.length;
  const thicknessBin = new Int32Array(n);
  const slantBin = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    thicknessBin[i] = bin(thickness[i]!, thresholds.thickness);
    slantBin[i] = bin(slant[i]!, thresholds.slant);
  }
  return { thickness, slant, thicknessBin, slantBin };
}

/** Quantile q of values with linear interpolation (numpy's default 'linear' method). */
export function quantile(values: Float64Array, q: number): number {
  const sorted = Float64Array.from(values).sort();
  const pos = q * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo]! + (pos - lo) * (sorted[hi]! - sorted[lo]!);
}

/** Tertile thresholds (quantiles 1/3 and 2/3) of thickness and slant over a set of images (the train split). */
export function computeThresholds(images: Float32Array): { thickness: [number, number]; slant: [number, number] } {
  const { thickness, slant } = measureRaw(images);
  return {
    thickness: [quantile(thickness, 1 / 3), quantile(thickness, 2 / 3)],
    slant: [quantile(slant, 1 / 3), quantile(slant, 2 / 3)],
  };
}
