import { describe, expect, it } from 'vitest';
import { frechetDistance, frechetDistanceFromStats, gaussianStats, sqrtPsd, symmetricEigen, type Gaussian } from '../../src/mnist/frechet.ts';
import { normalSampler } from '../../src/util/rng.ts';

/** Deterministic features; the same formula in numpy gave the scipy reference below. */
function feats(n: number, d: number, off: number, scale = 1, shift = 0): Float64Array {
  const x = new Float64Array(n * d);
  for (let r = 0; r < n; r++) for (let c = 0; c < d; c++) {
    x[r * d + c] = (Math.sin(r * 1.3 + c * 0.7 + c * c * 0.1 + off) + 0.5 * Math.cos(r * r * 0.01 * (c + 1)) + 0.3 * Math.sin(r * c * 0.37 + off * 2)) * scale + shift;
  }
  return x;
}

function matmul(a: Float64Array, b: Float64Array, n: number): Float64Array {
  const o = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let k = 0; k < n; k++) for (let j = 0; j < n; j++) o[i * n + j]! += a[i * n + k]! * b[k * n + j]!;
  return o;
}

/** tr(sqrtm(A)) of a (non-symmetric) matrix with positive eigenvalues by Denman–Beavers iteration: a second, independent way. */
function traceSqrtDenmanBeavers(a: Float64Array, n: number): number {
  const inv = (m: Float64Array): Float64Array => {
    const w = Float64Array.from(m), r = new Float64Array(n * n);
    for (let i = 0; i < n; i++) r[i * n + i] = 1;
    for (let c = 0; c < n; c++) {
      let p = c;
      for (let i = c + 1; i < n; i++) if (Math.abs(w[i * n + c]!) > Math.abs(w[p * n + c]!)) p = i;
      for (let j = 0; j < n; j++) { [w[c * n + j], w[p * n + j]] = [w[p * n + j]!, w[c * n + j]!]; [r[c * n + j], r[p * n + j]] = [r[p * n + j]!, r[c * n + j]!]; }
      const d = w[c * n + c]!;
      for (let j = 0; j < n; j++) { w[c * n + j]! /= d; r[c * n + j]! /= d; }
      for (let i = 0; i < n; i++) if (i !== c) {
        const f = w[i * n + c]!;
        for (let j = 0; j < n; j++) { w[i * n + j]! -= f * w[c * n + j]!; r[i * n + j]! -= f * r[c * n + j]!; }
      }
    }
    return r;
  };
  let y = Float64Array.from(a), z = new Float64Array(n * n);
  for (let i = 0; i < n; i++) z[i * n + i] = 1;
  for (let it = 0; it < 60; it++) {
    const yi = inv(y), zi = inv(z);
    const y2 = y.map((v, i) => 0.5 * (v + zi[i]!)), z2 = z.map((v, i) => 0.5 * (v + yi[i]!));
    y = y2; z = z2;
  }
  let t = 0;
  for (let i = 0; i < n; i++) t += y[i * n + i]!;
  return t;
}

describe('Fréchet distance', () => {
  it('diagonal covariances: |μ1-μ2|² + Σ(√a − √b)²', () => {
    const g = (mean: number[], diag: number[]): Gaussian => {
      const n = mean.length, cov = new Float64Array(n * n);
      diag.forEach((v, i) => (cov[i * n + i] = v));
      return { dim: n, n: 100, mean: Float64Array.from(mean), cov };
    };
    const a = g([0, 1, 2], [1, 4, 9]);
    const b = g([1, 1, 0], [4, 1, 0.25]);
    // |μ|² = 1 + 0 + 4 = 5; Σ(√a−√b)² = (1−2)² + (2−1)² + (3−0.5)² = 1 + 1 + 6.25
    expect(frechetDistanceFromStats(a, b)).toBeCloseTo(13.25, 10);
    expect(frechetDistanceFromStats(b, a)).toBeCloseTo(13.25, 10);
  });

  it('2×2 full covariances: tr√(Σ1Σ2) = sqrt(tr(Σ1Σ2) + 2 sqrt(det(Σ1Σ2)))', () => {
    const s1 = Float64Array.from([2, 0.6, 0.6, 1]), s2 = Float64Array.from([1, -0.3, -0.3, 0.5]);
    const p = matmul(s1, s2, 2);
    const trSqrt = Math.sqrt(p[0]! + p[3]! + 2 * Math.sqrt(p[0]! * p[3]! - p[1]! * p[2]!));
    const fd = frechetDistanceFromStats({ dim: 2, n: 9, mean: Float64Array.from([0, 0]), cov: s1 }, { dim: 2, n: 9, mean: Float64Array.from([1, 2]), cov: s2 });
    expect(fd).toBeCloseTo(5 + 3 + 1.5 - 2 * trSqrt, 12);
  });

  it('random full covariance: matches scipy (pytorch-fid formula) and Denman–Beavers', () => {
    const a = feats(50, 6, 0), b = feats(40, 6, 0.9, 1.5, 0.2);
    const fd = frechetDistance(a, b, 6);
    // numpy/scipy 1.17: np.cov, scipy.linalg.sqrtm(s1 @ s2).real (pytorch-fid's calculate_frechet_distance)
    expect(fd).toBeCloseTo(1.9066607419941217, 9);
    const g1 = gaussianStats(a, 6), g2 = gaussianStats(b, 6);
    let d2 = 0, tr = 0;
    for (let i = 0; i < 6; i++) { d2 += (g1.mean[i]! - g2.mean[i]!) ** 2; tr += g1.cov[i * 6 + i]! + g2.cov[i * 6 + i]!; }
    const viaDB = d2 + tr - 2 * traceSqrtDenmanBeavers(matmul(g1.cov, g2.cov, 6), 6);
    expect(fd).toBeCloseTo(viaDB, 9);
    expect(frechetDistance(a, a, 6)).toBeCloseTo(0, 9);
  });

  it('64-dim random features: symmetric, ≥ 0, sqrt squares back, rank-deficient OK', () => {
    const next = normalSampler(3);
    const n = 200, d = 64;
    const x = new Float64Array(n * d).map(() => next());
    const y = new Float64Array(n * d).map((_, i) => next() * (1 + (i % d) / d) + 0.1);
    for (let r = 0; r < n; r++) x[r * d + 5] = 0; // a dead feature (ReLU): singular covariance
    const fxy = frechetDistance(x, y, d), fyx = frechetDistance(y, x, d);
    expect(fxy).toBeGreaterThan(0);
    expect(Math.abs(fxy - fyx) / fxy).toBeLessThan(1e-8);
    const g = gaussianStats(y, d);
    const s = sqrtPsd(g.cov, d);
    const s2 = matmul(s, s, d);
    let err = 0;
    for (let i = 0; i < d * d; i++) err = Math.max(err, Math.abs(s2[i]! - g.cov[i]!));
    expect(err).toBeLessThan(1e-10);
    const { values } = symmetricEigen(g.cov, d);
    let tr = 0;
    for (const v of values) tr += v;
    let trc = 0;
    for (let i = 0; i < d; i++) trc += g.cov[i * d + i]!;
    expect(tr).toBeCloseTo(trc, 10);
  });
});
