/**
 * Parameter store: every weight of a model as a tf.Variable addressed by its diffusers state-dict
 * name, with the layout conversion between PyTorch and tfjs.
 *
 * PyTorch layouts (what files hold): conv [out, in, kh, kw], linear [out, in], vectors [n].
 * tfjs layouts (what ops use): conv [kh, kw, in, out], linear [in, out], vectors [n].
 */
import { tf } from '../tf.ts';
import type { Tensor, Variable } from '../tf.ts';
import type { StoredTensor } from './safetensors.ts';
import { writeSafetensorsStreaming } from './safetensors.ts';
import { checkAgainst, mapSource, readBufferFor, readFloat32, type TensorSource } from './weights.ts';

/** Host copies in PyTorch layout, keyed by diffusers name. */
export type HostArrays = Record<string, { shape: number[]; data: Float32Array }>;

export type ParamKind = 'conv' | 'linear' | 'vector';

export interface Param {
  name: string;
  kind: ParamKind;
  /** Shape in PyTorch layout, as the state dict stores it. */
  torchShape: number[];
  variable: Variable;
}

/** PyTorch layout → tfjs layout, as an axis permutation (null: the same layout). */
function torchToTfPerm(kind: ParamKind): number[] | null {
  return kind === 'conv' ? [2, 3, 1, 0] : kind === 'linear' ? [1, 0] : null;
}

/** The tfjs-layout shape of a PyTorch-layout one. */
export function tfShapeOf(kind: ParamKind, torchShape: number[]): number[] {
  const perm = torchToTfPerm(kind);
  return perm ? perm.map((axis) => torchShape[axis]!) : torchShape;
}

/**
 * A PyTorch-layout value as a tfjs-layout tensor. The tensor never shares `data`'s memory, so the
 * caller may reuse `data` (a read buffer) as soon as this returns: a real transpose writes a new
 * tensor (one op: a single pass over the values on the native backend); a permutation that moves
 * only size-1 axes leaves the values in order and is a copy instead, since a backend may make such
 * a transpose a view of its input.
 */
export function torchToTf(kind: ParamKind, data: Float32Array, torchShape: number[]): Tensor {
  const perm = torchToTfPerm(kind);
  if (!perm || isReshape(torchShape, perm)) return tf.tensor(data.slice(), tfShapeOf(kind, torchShape), 'float32');
  return tf.tidy(() => tf.transpose(tf.tensor(data, torchShape, 'float32'), perm));
}

/** Whether permuting `shape` by `perm` keeps the order of its axes longer than 1 (the values' order). */
function isReshape(shape: number[], perm: number[]): boolean {
  const moved = perm.filter((axis) => shape[axis]! > 1);
  return moved.every((axis, i) => i === 0 || axis > moved[i - 1]!);
}

export function tfToTorch(kind: ParamKind, t: Tensor): Tensor {
  return tf.tidy(() => {
    if (kind === 'conv') return tf.transpose(t, [3, 2, 0, 1]);
    if (kind === 'linear') return tf.transpose(t, [1, 0]);
    return tf.clone(t);
  });
}

/** A deterministic stream of variable ids, so two models never collide in tfjs' registry. */
let nextStoreId = 0;

/**
 * Where a new parameter's value comes from:
 * - `random` (default): PyTorch's default initialisation, seeded;
 * - `read`: the value in PyTorch layout, e.g. from a weights file: the variable is built from it
 *   directly, so a loaded model is never randomly initialised first. The array may be a view
 *   into a reused read buffer: the store copies it before the next read;
 * - `specOnly`: nothing; names, kinds and shapes are recorded and no variable is made (memory
 *   plans: a model's parameters from its config alone).
 */
export type ParamValues = { random: true } | { read: (name: string, torchShape: number[]) => Float32Array } | { specOnly: true };

export interface ParamSpec {
  name: string;
  kind: ParamKind;
  torchShape: number[];
}

/**
 * A variable that takes `initial`'s data over (no copy). tf.variable only adds a reference to the
 * initial tensor's data: left undisposed, that tensor would keep the initial values alive after the
 * first assign (for Adam's zero moments and the EMA's starting copy: three model-sized buffers).
 */
export function ownedVariable(initial: Tensor, trainable = false, name?: string): Variable {
  const v = tf.variable(initial, trainable, name);
  initial.dispose();
  return v;
}

/** Parameter values read from `source` one tensor at a time, through one read buffer reused for every tensor. */
export function fileValues(source: TensorSource): { read: (name: string, torchShape: number[]) => Float32Array } {
  const buffer = readBufferFor(source);
  return { read: (name) => readFloat32(source, name, buffer) };
}

export class ParamStore {
  readonly params = new Map<string, Param>();
  private readonly id = nextStoreId++;
  private seed: number;

  /** @param seed seeds the PyTorch-style default initialisation of new parameters. */
  constructor(seed = 0, readonly trainable = true, readonly values: ParamValues = { random: true }) {
    this.seed = seed * 100_003 + 1;
  }

  /**
   * Creates a parameter: read from `values.read` when the store has one, else initialised as
   * PyTorch's nn.Conv2d / nn.Linear do (kaiming_uniform(a=√5): U(±1/√fan_in) for weight and bias),
   * or to a constant for norms.
   */
  create(name: string, kind: ParamKind, torchShape: number[], init: { fanIn: number } | { constant: number }): Variable {
    if (this.params.has(name)) throw new Error(`duplicate parameter '${name}'`);
    if ('specOnly' in this.values) {
      // No variable: a spec-only store's model is never run (its layers only keep the reference).
      const variable = null as unknown as Variable;
      this.params.set(name, { name, kind, torchShape, variable });
      return variable;
    }
    const tfShape = tfShapeOf(kind, torchShape);
    const values = this.values;
    const value = tf.tidy(() => {
      if ('read' in values) return torchToTf(kind, values.read(name, torchShape), torchShape);
      if ('constant' in init) return tf.fill(tfShape, init.constant);
      const bound = 1 / Math.sqrt(init.fanIn);
      return tf.randomUniform(tfShape, -bound, bound, 'float32', this.seed++);
    });
    const variable = ownedVariable(value, this.trainable, `s${this.id}/${name}`);
    this.params.set(name, { name, kind, torchShape, variable });
    return variable;
  }

  /** Names, kinds and PyTorch shapes of every parameter. */
  specs(): ParamSpec[] {
    return [...this.params.values()].map(({ name, kind, torchShape }) => ({ name, kind, torchShape }));
  }

  /**
   * Assigns every parameter from a PyTorch-layout state dict or weight files, one tensor at a time;
   * any missing, unexpected or mis-shaped key is an error naming the source and what it should
   * match (`against`, e.g. 'the UNet config'). With `into`, the values go into those variables,
   * keyed and shaped like the store's (e.g. an EMA's shadows), instead of the store's own.
   */
  loadStateDict(tensors: Map<string, StoredTensor> | TensorSource, source: string, against: string, into?: Map<string, Variable>): void {
    const from = tensors instanceof Map ? mapSource(tensors, source) : tensors;
    checkAgainst(this.specs(), from, against);
    const read = fileValues(from).read;
    for (const [name, p] of this.params) {
      const value = torchToTf(p.kind, read(name, p.torchShape), p.torchShape);
      (into?.get(name) ?? p.variable).assign(value);
      value.dispose();
    }
  }

  get(name: string): Variable {
    const p = this.params.get(name);
    if (!p) throw new Error(`no parameter '${name}'`);
    return p.variable;
  }

  /** Parameters by diffusers name. */
  named(): Map<string, Variable> {
    return new Map([...this.params].map(([name, p]) => [name, p.variable]));
  }

  /** PyTorch-layout copies of every parameter, or of `values` (e.g. EMA shadows) keyed like them. */
  torchStateDict(values?: Map<string, Tensor>): HostArrays {
    const out: HostArrays = {};
    for (const name of this.params.keys()) out[name] = { shape: this.params.get(name)!.torchShape, data: this.torchValue(name, values) };
    return out;
  }

  /** One parameter (or its counterpart in `values`, e.g. an EMA shadow) copied to the host in PyTorch layout. */
  torchValue(name: string, values?: Map<string, Tensor>): Float32Array {
    const p = this.params.get(name);
    if (!p) throw new Error(`no parameter '${name}'`);
    const t = tfToTorch(p.kind, values?.get(name) ?? p.variable);
    const data = t.dataSync() as Float32Array;
    t.dispose();
    return data;
  }

  /**
   * Writes every parameter as float32 in PyTorch layout, streamed (one tensor on the host at a
   * time; atomic). `values`: device tensors keyed like the parameters (an EMA shadow), or host
   * arrays already in PyTorch layout (a snapshot); default the parameters themselves.
   */
  writeSafetensors(path: string, values?: Map<string, Tensor> | HostArrays, metadata: Record<string, string> = { format: 'pt' }): void {
    const specs = Object.fromEntries([...this.params.values()].map((p) => [p.name, { shape: p.torchShape, dtype: 'F32' as const }]));
    const produce = values instanceof Map || !values ? (name: string) => this.torchValue(name, values) : (name: string) => {
      const host = values[name];
      if (!host) throw new Error(`no value for parameter '${name}'`);
      return host.data;
    };
    writeSafetensorsStreaming(path, specs, produce, metadata);
  }

  variables(filter?: (name: string) => boolean): Variable[] {
    return [...this.params.values()].filter((p) => !filter || filter(p.name)).map((p) => p.variable);
  }

  numParameters(): number {
    let n = 0;
    for (const p of this.params.values()) n += p.torchShape.reduce((a, b) => a * b, 1);
    return n;
  }

  dispose(): void {
    for (const p of this.params.values()) p.variable?.dispose();
    this.params.clear();
  }
}
