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

export type ParamKind = 'conv' | 'linear' | 'vector';

export interface Param {
  name: string;
  kind: ParamKind;
  /** Shape in PyTorch layout, as the state dict stores it. */
  torchShape: number[];
  variable: Variable;
}

export function torchToTf(kind: ParamKind, data: Float32Array, torchShape: number[]): Tensor {
  return tf.tidy(() => {
    const t = tf.tensor(data, torchShape, 'float32');
    if (kind === 'conv') return tf.transpose(t, [2, 3, 1, 0]);
    if (kind === 'linear') return tf.transpose(t, [1, 0]);
    return t;
  });
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

export class ParamStore {
  readonly params = new Map<string, Param>();
  private readonly id = nextStoreId++;
  private seed: number;

  /** @param seed seeds the PyTorch-style default initialisation of new parameters. */
  constructor(seed = 0, readonly trainable = true) {
    this.seed = seed * 100_003 + 1;
  }

  /**
   * Creates a parameter initialised as PyTorch's nn.Conv2d / nn.Linear do (kaiming_uniform(a=√5):
   * U(±1/√fan_in) for weight and bias), or to a constant for norms.
   */
  create(name: string, kind: ParamKind, torchShape: number[], init: { fanIn: number } | { constant: number }): Variable {
    if (this.params.has(name)) throw new Error(`duplicate parameter '${name}'`);
    const tfShape = kind === 'conv' ? [torchShape[2]!, torchShape[3]!, torchShape[1]!, torchShape[0]!] : kind === 'linear' ? [torchShape[1]!, torchShape[0]!] : torchShape;
    const value = tf.tidy(() => {
      if ('constant' in init) return tf.fill(tfShape, init.constant);
      const bound = 1 / Math.sqrt(init.fanIn);
      return tf.randomUniform(tfShape, -bound, bound, 'float32', this.seed++);
    });
    const variable = tf.variable(value, this.trainable, `s${this.id}/${name}`);
    value.dispose();
    this.params.set(name, { name, kind, torchShape, variable });
    return variable;
  }

  /**
   * Assigns every parameter from a PyTorch-layout state dict; any missing, unexpected or
   * mis-shaped key is an error naming `source` and what it should match (`against`, e.g. 'the UNet config').
   */
  loadStateDict(tensors: Map<string, StoredTensor>, source: string, against: string): void {
    const missing = [...this.params.keys()].filter((k) => !tensors.has(k));
    const unexpected = [...tensors.keys()].filter((k) => !this.params.has(k));
    const misShaped: string[] = [];
    for (const [name, p] of this.params) {
      const t = tensors.get(name);
      if (t && t.shape.join(',') !== p.torchShape.join(',')) misShaped.push(`${name}: file [${t.shape}] vs model [${p.torchShape}]`);
    }
    const problems = [
      missing.length ? `missing keys (${missing.length}): ${missing.join(', ')}` : '',
      unexpected.length ? `unexpected keys (${unexpected.length}): ${unexpected.join(', ')}` : '',
      misShaped.length ? `mis-shaped keys (${misShaped.length}): ${misShaped.join('; ')}` : '',
    ].filter(Boolean);
    if (problems.length) throw new Error(`${source} does not match ${against}:\n  ${problems.join('\n  ')}`);
    for (const [name, p] of this.params) {
      const t = tensors.get(name)!;
      const value = torchToTf(p.kind, t.data as Float32Array, t.shape);
      p.variable.assign(value);
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
  torchStateDict(values?: Map<string, Tensor>): Record<string, { shape: number[]; data: Float32Array }> {
    const out: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (const [name, p] of this.params) {
      const source = values?.get(name) ?? p.variable;
      const t = tfToTorch(p.kind, source);
      out[name] = { shape: p.torchShape, data: t.dataSync() as Float32Array };
      t.dispose();
    }
    return out;
  }

  variables(filter?: (name: string) => boolean): Variable[] {
    return [...this.params.values()].filter((p) => !filter || filter(p.name)).map((p) => p.variable);
  }

  numParameters(): number {
    let n = 0;
    for (const p of this.params.values()) n += p.variable.size;
    return n;
  }

  dispose(): void {
    for (const p of this.params.values()) p.variable.dispose();
    this.params.clear();
  }
}
