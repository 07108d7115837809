/**
 * Fréchet distance between two sets of feature vectors, as pytorch-fid computes FID:
 *   FD = |μ1 − μ2|² + tr(Σ1) + tr(Σ2) − 2 tr( (Σ1 Σ2)^{1/2} )
 * with μ, Σ the mean and the unbiased (N−1) covariance, all in float64. tr((Σ1Σ2)^{1/2}) is computed
 * symmetrically: Σ1Σ2 is similar to the PSD matrix M = Σ1^{1/2} Σ2 Σ1^{1/2}, so
 * tr((Σ1Σ2)^{1/2}) = Σ_i sqrt(λ_i(M)). Both square roots come from cyclic Jacobi eigen-decompositions
 * of symmetric matrices; eigenvalues that round below zero are clamped to 0 (scipy's sqrtm would
 * return a tiny imaginary part there, which pytorch-fid discards).
 */

export interface Gaussian {
  dim: number;
  n: number;
  mean: Float64Array;
  /** [dim, dim] row-major, unbiased. */
  cov: Float64Array;
}

/** Mean and unbiased covariance of `n` rows of `dim` features (row-major). */
export function gaussianStats(features: ArrayLike<number>, dim: number): Gaussian {
  if (features.length % dim !== 0) throw new Error(`features: length ${features.length} is not a multiple of dim ${dim}`);
  const n = features.length / dim;
  if (n < 2) throw new Error(`features: need at least 2 rows for a covariance, got ${n}`);
  const mean = new Float64Array(dim);
  for (let r = 0; r < n; r++) for (let c = 0; c < dim; c++) mean[c]! += features[r * dim + c]!;
  for (let c = 0; c < dim; c++) mean[c]! /= n;
  const cov = new Float64Array(dim * dim);
  const row = new Float64Array(dim);
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < dim; c++) row[c] = features[r * dim + c]! - mean[c]!;
    for (let a = 0; a < dim; a++) {
      const va = row[a]!;
      if (va === 0) continue;
      for (let b = a; b < dim; b++) cov[a * dim + b]! += va * row[b]!;
    }
  }
  for (let a = 0; a < dim; a++) {
    for (let b = a; b < dim; b++) {
      const v = cov[a * dim + b]! / (n - 1);
      cov[a * dim + b] = v;
      cov[b * dim + a] = v;
    }
  }
  return { dim, n, mean, cov };
}

/**
 * Eigen-decomposition of a symmetric matrix [n, n] by cyclic Jacobi rotations (float64).
 * Returns eigenvalues and eigenvectors as the COLUMNS of `vectors` (A = V diag(λ) Vᵀ).
 */
export function symmetricEigen(matrix: ArrayLike<number>, n: number, { tol = 1e-14, maxSweeps = 100 } = {}): { values: Float64Array; vectors: Float64Array } {
  const a = Float64Array.from(matrix as ArrayLike<number>);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  let total = 0;
  for (let i = 0; i < n * n; i++) total += a[i]! * a[i]!;
  const scale = Math.sqrt(total) || 1;
  for (let sweep = 0; sweep < maxSweeps; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p * n + q]! * a[p * n + q]!;
    if (Math.sqrt(2 * off) <= tol * scale) break;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q]!;
        if (Math.abs(apq) <= 1e-300) continue;
        const app = a[p * n + p]!, aqq = a[q * n + q]!;
        const theta = (aqq - app) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        // rotate rows/columns p and q
        for (let k = 0; k < n; k++) {
          const akp = a[k * n + p]!, akq = a[k * n + q]!;
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p * n + k]!, aqk = a[q * n + k]!;
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = v[k * n + p]!, vkq = v[k * n + q]!;
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) values[i] = a[i * n + i]!;
  return { values, vectors: v };
}

/** Principal square root of a symmetric PSD matrix (negative eigenvalues clamped to 0). */
export function sqrtPsd(matrix: ArrayLike<number>, n: number): Float64Array {
  const { values, vectors } = symmetricEigen(matrix, n);
  const out = new Float64Array(n * n);
  for (let k = 0; k < n; k++) {
    const s = Math.sqrt(Math.max(values[k]!, 0));
    if (s === 0) continue;
    for (let i = 0; i < n; i++) {
      const vik = vectors[i * n + k]! * s;
      if (vik === 0) continue;
      for (let j = 0; j < n; j++) out[i * n + j]! += vik * vectors[j * n + k]!;
    }
  }
  return out;
}

function matmul(a: Float64Array, b: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < n; k++) {
      const aik = a[i * n + k]!;
      if (aik === 0) continue;
      for (let j = 0; j < n; j++) out[i * n + j]! += aik * b[k * n + j]!;
    }
  }
  return out;
}

/** tr((Σ1 Σ2)^{1/2}) via the eigenvalues of Σ1^{1/2} Σ2 Σ1^{1/2}. */
export function traceSqrtProduct(cov1: Float64Array, cov2: Float64Array, n: number): number {
  const s1 = sqrtPsd(cov1, n);
  const m = matmul(matmul(s1, cov2, n), s1, n);
  // symmetrise away rounding before the symmetric eigen-solver
  for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) {
    const v = 0.5 * (m[i * n + j]! + m[j * n + i]!);
    m[i * n + j] = v;
    m[j * n + i] = v;
  }
  const { values } = symmetricEigen(m, n);
  let tr = 0;
  for (const l of values) tr += Math.sqrt(Math.max(l, 0));
  return tr;
}

/** Fréchet distance between two Gaussians. */
export function frechetDistanceFromStats(g1: Gaussian, g2: Gaussian): number {
  if (g1.dim !== g2.dim) throw new Error(`Fréchet distance: feature dims differ (${g1.dim} vs ${g2.dim})`);
  const n = g1.dim;
  let d2 = 0, tr1 = 0, tr2 = 0;
  for (let i = 0; i < n; i++) {
    d2 += (g1.mean[i]! - g2.mean[i]!) ** 2;
    tr1 += g1.cov[i * n + i]!;
    tr2 += g2.cov[i * n + i]!;
  }
  return d2 + tr1 + tr2 - 2 * traceSqrtProduct(g1.cov, g2.cov, n);
}

/** Fréchet distance between two feature sets, each `n_i` rows of `dim` (row-major). */
export function frechetDistance(features1: ArrayLike<number>, features2: ArrayLike<number>, dim: number): number {
  return frechetDistanceFromStats(gaussianStats(features1, dim), gaussianStats(features2, dim));
}
