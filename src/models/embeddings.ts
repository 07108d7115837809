/** Sinusoidal timestep embedding (diffusers' get_timestep_embedding) and TimestepEmbedding. */
import { tf } from '../tf.ts';
import type { Tensor2D } from '../tf.ts';
import type { ParamStore } from './params.ts';
import { Linear, silu } from './layers.ts';

/**
 * get_timestep_embedding(timesteps, dim, flip_sin_to_cos, downscale_freq_shift), computed on the
 * host with float32 rounding at the same points as PyTorch (the argument t·freq reaches ~1000, where
 * float32 rounding of the argument alone moves sin by ~1e-4).
 */
export function timestepEmbedding(timesteps: ArrayLike<number>, dim: number, flipSinToCos: boolean, freqShift: number, maxPeriod = 10000): Float32Array {
  const f = Math.fround;
  const half = Math.floor(dim / 2);
  const freqs = new Float32Array(half);
  for (let i = 0; i < half; i++) freqs[i] = f(Math.exp(f(f(-Math.log(maxPeriod) * i) / f(half - freqShift))));
  const out = new Float32Array(timesteps.length * dim);
  for (let b = 0; b < timesteps.length; b++) {
    const t = f(timesteps[b]!);
    for (let i = 0; i < half; i++) {
      const arg = f(t * freqs[i]!);
      const sin = Math.sin(arg);
      const cos = Math.cos(arg);
      out[b * dim + i] = flipSinToCos ? cos : sin;
      out[b * dim + half + i] = flipSinToCos ? sin : cos;
    }
  }
  return out; // an odd dim leaves the last column zero, as diffusers pads it
}

export class TimestepEmbedding {
  readonly linear_1: Linear;
  readonly linear_2: Linear;

  constructor(store: ParamStore, name: string, inChannels: number, timeEmbedDim: number) {
    this.linear_1 = new Linear(store, `${name}.linear_1`, inChannels, timeEmbedDim);
    this.linear_2 = new Linear(store, `${name}.linear_2`, timeEmbedDim, timeEmbedDim);
  }

  forward(x: Tensor2D): Tensor2D {
    return this.linear_2.forward(silu(this.linear_1.forward(x)));
  }
}

export function timestepTensor(timesteps: ArrayLike<number>, dim: number, flipSinToCos: boolean, freqShift: number): Tensor2D {
  return tf.tensor2d(timestepEmbedding(timesteps, dim, flipSinToCos, freqShift), [timesteps.length, dim]);
}
