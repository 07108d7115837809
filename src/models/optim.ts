/**
 * Optimisation pieces with PyTorch's exact semantics and state that can be saved by parameter
 * name: Adam (torch.optim.Adam: bias-corrected, eps outside the sqrt), clip_grad_norm_, and an EMA
 * of weights (diffusers' EMAModel with a constant decay).
 */
import { tf } from '../tf.ts';
import type { Tensor, Variable } from '../tf.ts';
import { readFloat32, type TensorSource } from './weights.ts';
import { ownedVariable } from './params.ts';

export type NamedGrads = Map<string, Tensor>;

export interface AdamOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
}

/** Values per Adam bucket: bounds the update's temporaries (a dozen bucket-sized tensors) to ~400 MB. */
export const ADAM_BUCKET_VALUES = 8 * 1024 * 1024;

/** Where one moment (`<param>.exp_avg` or `<param>.exp_avg_sq`) lies in a snapshot: a range of a flat bucket. */
export interface AdamMoment {
  /** The parameter's shape (tfjs layout). */
  shape: number[];
  buffer: Tensor;
  offset: number;
  size: number;
}

/** Adam's state at one step, sharing the moments' device buffers (see `Adam.snapshotState`). */
export interface AdamState {
  step: number;
  /** By PyTorch's names: `<param>.exp_avg`, `<param>.exp_avg_sq`. */
  moments: Map<string, AdamMoment>;
  /** The cloned buckets the moments lie in (owned by the snapshot). */
  buffers: Tensor[];
}

/** One moment copied to the host. */
export function readMoment(m: AdamMoment): Float32Array {
  const slice = m.offset === 0 && m.size === m.buffer.size ? null : tf.slice(m.buffer, [m.offset], [m.size]);
  try {
    return (slice ?? m.buffer).dataSync() as Float32Array;
  } finally {
    slice?.dispose();
  }
}

export function disposeAdamState(state: AdamState): void {
  tf.dispose(state.buffers);
}

/** Consecutive parameters updated as one flat buffer, with their moments. */
interface AdamBucket {
  names: string[];
  sizes: number[];
  /** Offsets inside the bucket. */
  offsets: number[];
  total: number;
  expAvg: Variable;
  expAvgSq: Variable;
}

/**
 * Adam over flat buffers: consecutive parameters are grouped into buckets of at most
 * ADAM_BUCKET_VALUES values (a larger parameter is a bucket alone); each bucket's moments live in
 * two flat Variables, and each update concatenates the bucket's gradients and parameters, runs the
 * dozen element-wise ops once on the whole buffer, then copies the new values back into the
 * parameters. Element-wise ops compute each element alone, so this is bit-identical to the
 * per-tensor update, with ~12 kernel calls per bucket instead of ~12 per parameter (hundreds of
 * small tensors in a UNet), while the update's temporaries stay bucket-sized, not model-sized
 * (one flat buffer for a 59 M-parameter UNet held a dozen 236 MB temporaries at once).
 */
export class Adam {
  /** Mutable so a learning-rate schedule (e.g. warm-up) can set it before each step. */
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  /** Number of steps taken (PyTorch's state['step']). */
  step = 0;
  private readonly buckets: AdamBucket[] = [];
  private readonly total: number;

  constructor(readonly params: Map<string, Variable>, options: AdamOptions, bucketValues = ADAM_BUCKET_VALUES) {
    this.lr = options.lr;
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.eps = options.eps ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 0;
    let total = 0;
    let open: Omit<AdamBucket, 'expAvg' | 'expAvgSq'> | null = null;
    const groups: Omit<AdamBucket, 'expAvg' | 'expAvgSq'>[] = [];
    for (const [name, p] of params) {
      if (!open || (open.total > 0 && open.total + p.size > bucketValues)) groups.push((open = { names: [], sizes: [], offsets: [], total: 0 }));
      open.names.push(name);
      open.sizes.push(p.size);
      open.offsets.push(open.total);
      open.total += p.size;
      total += p.size;
    }
    this.total = total;
    // tf.fill runs on the backend; tf.zeros would build each moment as a JavaScript array first (on the
    // native backend that array is only copied in at the first update and then waits for a GC: 2 × 4
    // bytes per parameter of host memory at the first step).
    for (const g of groups) this.buckets.push({ ...g, expAvg: ownedVariable(tf.fill([g.total], 0)), expAvgSq: ownedVariable(tf.fill([g.total], 0)) });
  }

  /**
   * One update from gradients keyed by parameter name, each multiplied by `gradScale` first (the
   * clipping coefficient: the same element-wise product clip_grad_norm_ makes, without a clipped
   * copy of every gradient). Gradients are not disposed.
   */
  apply(grads: NamedGrads, gradScale = 1): void {
    this.step += 1;
    if (this.total === 0) return;
    if (![...this.params.keys()].some((n) => grads.has(n))) return;
    for (const bucket of this.buckets) this.applyBucket(bucket, grads, gradScale);
  }

  /**
   * The bucket's update, each stage in its own tidy so that no more than about five bucket-sized
   * temporaries are alive at once; the new values go back into the parameters on the device (a
   * split, no host copy).
   */
  private applyBucket(bucket: AdamBucket, grads: NamedGrads, gradScale: number): void {
    const bc1 = 1 - this.beta1 ** this.step;
    const bc2 = 1 - this.beta2 ** this.step;
    const stepSize = this.lr / bc1;
    const params = bucket.names.map((n) => this.params.get(n)!);
    const missing = bucket.names.filter((n) => !grads.has(n));
    if (missing.length === bucket.names.length) return;
    const flat = (ts: Tensor[]) => (ts.length === 1 ? tf.reshape(ts[0]!, [-1]) : tf.concat(ts.map((t) => tf.reshape(t, [-1]))));
    const p = tf.tidy(() => flat(params));
    const g = tf.tidy(() => {
      let g = flat(bucket.names.map((n, i) => grads.get(n) ?? tf.fill([bucket.sizes[i]!], 0)));
      if (gradScale !== 1) g = tf.mul(g, gradScale);
      if (this.weightDecay) g = tf.add(g, tf.mul(p, this.weightDecay));
      return g;
    });
    const m = bucket.expAvg;
    const v = bucket.expAvgSq;
    const mNew = tf.tidy(() => tf.add(tf.mul(m, this.beta1), tf.mul(g, 1 - this.beta1)));
    const vNew = tf.tidy(() => tf.add(tf.mul(v, this.beta2), tf.mul(tf.square(g), 1 - this.beta2)));
    g.dispose();
    const pNew = tf.tidy(() => tf.sub(p, tf.mul(tf.div(mNew, tf.add(tf.div(tf.sqrt(vNew), Math.sqrt(bc2)), this.eps)), stepSize)));
    tf.tidy(() => {
      // Parameters without a gradient keep their values and moments.
      const mask = missing.length ? tf.tensor1d(keepMask(bucket, grads), 'bool') : null;
      const pick = (updated: Tensor, old: Tensor) => (mask ? tf.where(mask, updated, old) : updated);
      m.assign(pick(mNew, m));
      v.assign(pick(vNew, v));
      const values = pick(pNew, p);
      const parts = params.length === 1 ? [values] : tf.split(values, bucket.sizes);
      params.forEach((param, i) => {
        if (grads.has(bucket.names[i]!)) param.assign(tf.reshape(parts[i]!, param.shape));
      });
    });
    tf.dispose([p, mNew, vNew, pNew]);
  }

  /** State as PyTorch names it: `<param>.exp_avg`, `<param>.exp_avg_sq` (tfjs layouts), copied to the host. */
  stateTensors(): Record<string, { shape: number[]; data: Float32Array }> {
    const snapshot = this.snapshotState();
    try {
      return Object.fromEntries([...snapshot.moments].map(([name, m]) => [name, { shape: m.shape, data: readMoment(m) }]));
    } finally {
      disposeAdamState(snapshot);
    }
  }

  /**
   * The state at this moment without a copy: each bucket's moments cloned (a clone shares the
   * Variable's data; the next update assigns the Variable a new buffer and leaves the clone's
   * intact). Dispose it with `disposeAdamState` (the writer does).
   */
  snapshotState(): AdamState {
    const moments = new Map<string, AdamMoment>();
    const buffers: Tensor[] = [];
    for (const bucket of this.buckets) {
      for (const suffix of ['exp_avg', 'exp_avg_sq'] as const) {
        const buffer = tf.keep(tf.clone(suffix === 'exp_avg' ? bucket.expAvg : bucket.expAvgSq));
        buffers.push(buffer);
        bucket.names.forEach((name, i) => moments.set(`${name}.${suffix}`, { shape: this.params.get(name)!.shape, buffer, offset: bucket.offsets[i]!, size: bucket.sizes[i]! }));
      }
    }
    return { step: this.step, moments, buffers };
  }

  /**
   * Restores the moments from tensors named as `stateTensors` names them: a Map held in memory, or
   * a file source read one tensor at a time (one bucket, at most ADAM_BUCKET_VALUES values, is
   * assembled on the host at once).
   */
  loadState(step: number, tensors: Map<string, { shape: number[]; data: object }> | TensorSource, source = 'optimizer state'): void {
    const get = tensors instanceof Map ? (name: string) => tensors.get(name) : (name: string) => (tensors.entries.has(name) ? { shape: tensors.entries.get(name)!.shape, data: readFloat32(tensors, name) } : undefined);
    for (const bucket of this.buckets) {
      for (const suffix of ['exp_avg', 'exp_avg_sq'] as const) {
        const all = new Float32Array(bucket.total);
        bucket.names.forEach((name, i) => {
          const t = get(`${name}.${suffix}`);
          const shape = this.params.get(name)!.shape;
          if (!t) throw new Error(`${source}: missing '${name}.${suffix}'`);
          if (t.shape.join(',') !== shape.join(',')) throw new Error(`${source}: '${name}.${suffix}' has shape [${t.shape}], expected [${shape}]`);
          const data = t.data as ArrayLike<number>;
          if (data.length !== bucket.sizes[i]) throw new Error(`${source}: '${name}.${suffix}' holds ${data.length} values, expected ${bucket.sizes[i]}`);
          all.set(data, bucket.offsets[i]!);
        });
        const value = tf.tensor1d(all);
        (suffix === 'exp_avg' ? bucket.expAvg : bucket.expAvgSq).assign(value);
        value.dispose();
      }
    }
    this.step = step;
  }

  dispose(): void {
    for (const b of this.buckets) {
      b.expAvg.dispose();
      b.expAvgSq.dispose();
    }
  }
}

/** Sums gradients over an accumulation window, each scaled by 1/k as accelerate's loss scaling does. */
export class GradAccumulator {
  private readonly sums = new Map<string, Tensor>();
  /** Micro-batches added since the last `take`. */
  count = 0;

  /** Adds `grads · scale` (the caller keeps ownership of `grads`). */
  add(grads: NamedGrads, scale: number): void {
    this.addOwned(new Map([...grads].map(([name, g]) => [name, tf.clone(g)])), scale);
  }

  /**
   * Adds `grads · scale` and disposes `grads` (ownership passes here): the first micro-batch of a
   * window with scale 1 keeps the tensors as they are, instead of copying them.
   */
  addOwned(grads: NamedGrads, scale: number): void {
    for (const [name, g] of grads) {
      const scaled = scale === 1 ? g : tf.mul(g, scale);
      if (scaled !== g) g.dispose();
      const prev = this.sums.get(name);
      if (prev) {
        this.sums.set(name, tf.add(prev, scaled));
        prev.dispose();
        scaled.dispose();
      } else {
        this.sums.set(name, scaled);
      }
    }
    this.count += 1;
  }

  /** The window's summed gradients; ownership passes to the caller and the accumulator empties. */
  take(): NamedGrads {
    const out = new Map(this.sums);
    this.sums.clear();
    this.count = 0;
    return out;
  }

  get empty(): boolean {
    return this.count === 0;
  }

  dispose(): void {
    tf.dispose([...this.sums.values()]);
    this.sums.clear();
    this.count = 0;
  }
}

/** Total L2 norm of all gradients (host number), as torch.nn.utils.clip_grad_norm_ computes it. */
export function globalNorm(grads: Iterable<Tensor>): number {
  const list = [...grads];
  if (!list.length) return 0;
  // Each square is summed in its own tidy, so no more than one gradient-sized temporary is alive.
  return tf.tidy(() => tf.sqrt(tf.addN(list.map((g) => tf.tidy(() => tf.sum(tf.square(g)))))).dataSync()[0]!);
}

/** clip_grad_norm_'s factor for gradients of total norm `norm`: min(1, maxNorm / (norm + 1e-6)). */
export function clipCoefficient(norm: number, maxNorm: number): number {
  return Math.min(1, maxNorm / (norm + 1e-6));
}

/**
 * clip_grad_norm_: scales every gradient by min(1, maxNorm / (norm + 1e-6)). Returns the pre-clip
 * norm, which may be NaN/Inf (callers check it), and the clipped gradients: new tensors when
 * scaled, the SAME tensors when the coefficient is 1 (no copies); the caller disposes both maps
 * (disposing a tensor twice is a no-op in tfjs).
 */
export function clipGradNorm(grads: NamedGrads, maxNorm: number): { grads: NamedGrads; norm: number } {
  const norm = globalNorm(grads.values());
  const coef = clipCoefficient(norm, maxNorm);
  const out: NamedGrads = new Map();
  for (const [name, g] of grads) out.set(name, coef === 1 ? g : tf.mul(g, coef));
  return { grads: out, norm };
}

/** 1 where the bucket's parameter has a gradient in `grads`, 0 where not. */
function keepMask(bucket: AdamBucket, grads: NamedGrads): Uint8Array {
  const keep = new Uint8Array(bucket.total).fill(1);
  bucket.names.forEach((n, i) => {
    if (!grads.has(n)) keep.fill(0, bucket.offsets[i]!, bucket.offsets[i]! + bucket.sizes[i]!);
  });
  return keep;
}

/** Exponential moving average of weights: shadow = decay·shadow + (1-decay)·param. */
export class EmaWeights {
  readonly shadow = new Map<string, Variable>();

  constructor(readonly params: Map<string, Variable>, readonly decay: number) {
    for (const [name, p] of params) this.shadow.set(name, ownedVariable(tf.clone(p)));
  }

  /**
   * diffusers' EMAModel decay for its `optimizationStep`-th update (1-based, no warm-up):
   * min(decay, (1 + s) / (10 + s)) with s = optimizationStep - 1, and 0 for the first update, so a
   * short run's EMA follows the weights instead of staying at the initialisation.
   */
  decayAt(optimizationStep: number): number {
    const s = optimizationStep - 1;
    return s <= 0 ? 0 : Math.min(this.decay, (1 + s) / (10 + s));
  }

  /** shadow ← d·shadow + (1−d)·param, with d = `decay` (default: the constant decay). */
  update(decay = this.decay): void {
    // A tidy per parameter: the two scaled temporaries are freed at once, not after the last one.
    for (const [name, p] of this.params) {
      const s = this.shadow.get(name)!;
      tf.tidy(() => s.assign(decay === 0 ? tf.clone(p) : tf.add(tf.mul(s, decay), tf.mul(p, 1 - decay))));
    }
  }

  /** Current shadow values as plain arrays keyed by name (for checkpoints). */
  tensors(): Record<string, { shape: number[]; data: Float32Array }> {
    return Object.fromEntries([...this.shadow].map(([k, v]) => [k, { shape: v.shape, data: v.dataSync() as Float32Array }]));
  }

  /** Shadow values keyed by parameter name (tfjs layouts). */
  get(name: string): Variable {
    return this.shadow.get(name)!;
  }

  load(tensors: Map<string, { shape: number[]; data: object }>, source = 'EMA state'): void {
    for (const [name, s] of this.shadow) {
      const t = tensors.get(name);
      if (!t) throw new Error(`${source}: missing '${name}'`);
      const value = tf.tensor(t.data as Float32Array, s.shape);
      s.assign(value);
      value.dispose();
    }
  }

  dispose(): void {
    for (const s of this.shadow.values()) s.dispose();
    this.shadow.clear();
  }
}
