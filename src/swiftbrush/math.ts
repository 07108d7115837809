/**
 * The SwiftBrush step's math, once, as plain functions (no RxJS): the operators in
 * `src/operators` and the reference loop (`reference_step.ts`) both call these.
 *
 * Tensors are NHWC. Every function returns tensors its caller owns and frees its intermediates.
 */
import { tf } from '../tf.ts';
import type { Tensor, Tensor3D, Tensor4D } from '../tf.ts';
import type { NamedGrads } from '../models/optim.ts';
import { variableGrads } from '../models/backprop.ts';
import type { DistillState } from '../operators/state.ts';

/** The latent shape of one sample, from the student's config: [H, W, C] (NHWC). */
export function latentShape(state: DistillState): [number, number, number] {
  const c = state.student.config;
  const size = c.sample_size;
  if (typeof size !== 'number') throw new Error(`the UNet config needs an integer 'sample_size' to draw the student's noise (got ${JSON.stringify(size)})`);
  return [size, size, c.in_channels];
}

/** f_θ(z, y): the UNet's prediction at the last train timestep T−1, turned into x0 (ε or v form). */
export function studentX0(state: DistillState, latents: Tensor4D, promptEmbeds: Tensor3D): Tensor4D {
  const last = state.schedule.numTrainTimesteps - 1;
  const timesteps = new Array<number>(latents.shape[0]).fill(last);
  return tf.tidy(() => state.schedule.predictOriginal(state.student.forward(latents, timesteps, promptEmbeds), latents, timesteps) as Tensor4D);
}

/** Guided ε of the teacher with LoRA on or off, on (x_t, t, y) and (x_t, t, y0) in one pass. */
export function guidedEpsilon(state: DistillState, loraEnabled: boolean, xt: Tensor4D, timesteps: number[], y: Tensor3D, w: number): Tensor4D {
  return tf.tidy(() => {
    const b = xt.shape[0];
    const y0 = tf.tile(state.nullEmbeds, [b, 1, 1]) as Tensor3D;
    const x2 = tf.concat([xt, xt], 0);
    const t2 = [...timesteps, ...timesteps];
    const out = state.lora.with(loraEnabled, () => state.teacher.forward(x2, t2, tf.concat([y0, y], 0)));
    const eps = state.schedule.predictEpsilon(out, x2, t2) as Tensor4D;
    const [epsU, epsC] = tf.split(eps, 2, 0) as [Tensor4D, Tensor4D];
    return tf.add(epsU, tf.mul(tf.sub(epsC, epsU), w));
  });
}

const FLOAT32_MAX = 3.4028234663852886e38;

/** torch.nan_to_num: NaN → 0, ±Inf → ±float32 max. */
export function nanToNum<T extends Tensor>(x: T): T {
  return tf.tidy(() => tf.where(tf.isNaN(x), tf.zerosLike(x), tf.clipByValue(x, -FLOAT32_MAX, FLOAT32_MAX)) as T);
}

/**
 * The score gradient g = nan_to_num(w · (ε_teacher − ε_lora)), w per sample: σ_t² ('official'), or
 * 1 / mean|ε − ε_teacher| ('dmd': DMD's (μ_fake − μ_real) / mean|μ_real − x̂0|, where the factors
 * σ_t/√ᾱ_t of both x0-differences cancel). `noise` is the ε that noiseAtT added.
 *
 * With sdsWeight λ the fake score is (1 − λ)·ε_lora + λ·ε: λ = 0 is VSD, λ = 1 is DreamFusion's SDS
 * (ε_teacher − ε). The SDS part pulls x̂0 towards the teacher's mode wherever the LoRA teacher
 * models the student's samples as well as the teacher does, e.g. pixel noise that a LoRA on
 * low-resolution attention cannot represent, so that VSD's difference there is ~0.
 */
export function scoreGradient(state: DistillState, epsTeacher: Tensor4D, epsLora: Tensor4D, timesteps: number[], noise: Tensor4D): Tensor4D {
  return tf.tidy(() => {
    const weight = state.config.vsdWeighting === 'dmd'
      ? tf.reciprocal(tf.mean(tf.abs(tf.sub(noise, epsTeacher)), [1, 2, 3], true))
      : tf.tensor4d(timesteps.map((t) => 1 - state.schedule.alphaBar(t)), [timesteps.length, 1, 1, 1]);
    const lambda = state.config.sdsWeight;
    const fake = lambda > 0 ? tf.add(tf.mul(epsLora, 1 - lambda), tf.mul(noise, lambda)) : epsLora;
    return nanToNum(tf.mul(weight, tf.sub(epsTeacher, fake)));
  });
}

/** The VSD loss's value 0.5·mean(g²) (= 0.5·mse(x̂0, sg(x̂0 − g))). */
export function vsdLossValue(g: Tensor4D): number {
  return tf.tidy(() => tf.mul(tf.mean(tf.square(g)), 0.5).dataSync()[0]!);
}

/**
 * Named gradients of Σ f_θ(z, y)·g / numel: the VSD loss's gradient w.r.t. the student, taken under
 * a fresh tape that recomputes f_θ(z, y) (the stream's form: its tape cannot span operators).
 */
export function studentGradients(state: DistillState, z: Tensor4D, y: Tensor, g: Tensor4D): NamedGrads {
  const params = state.student.store.named();
  const { value, grads } = variableGrads(() => tf.div(tf.sum(tf.mul(studentX0(state, z, y as never), g)), g.size) as tf.Scalar, [...params.values()]);
  value.dispose();
  return new Map([...params].map(([name, v]) => [name, grads[v.name]!]));
}

/**
 * The LoRA teacher's training sample from the student's output: x̂_t′ = √ᾱ_t′ sg(x̂0) + σ_t′ ε′ and
 * its regression target (ε′, or v for a v-prediction teacher). Takes ownership of `noise`.
 */
export function loraTrainingSample(state: DistillState, x0: Tensor4D, noise: Tensor4D, timesteps: number[]): { xt: Tensor4D; target: Tensor4D } {
  const type = state.schedule.predictionType;
  if (type !== 'epsilon' && type !== 'v_prediction') {
    noise.dispose();
    throw new Error(`noiseAtTPrime: prediction_type '${type}' is not supported for the LoRA teacher (epsilon or v_prediction)`);
  }
  const xt = state.schedule.addNoise(x0, noise, timesteps) as Tensor4D;
  if (type === 'epsilon') return { xt, target: noise };
  const target = state.schedule.velocity(x0, noise, timesteps) as Tensor4D;
  noise.dispose();
  return { xt, target };
}

/** The LoRA teacher's condition: y, or the null prompt y0 for the whole batch (a new tensor). */
export function loraCondition(state: DistillState, y: Tensor3D, usesNullPrompt: boolean): Tensor3D {
  return usesNullPrompt ? (tf.tile(state.nullEmbeds, [y.shape[0], 1, 1]) as Tensor3D) : y;
}

/**
 * The LoRA teacher's loss mse(√ᾱ_t′ ε_φ(x̂_t′, t′, c), √ᾱ_t′ target) ('official'; 'epsilon' drops
 * the weight) and its gradients w.r.t. the LoRA weights.
 */
export function loraGradients(state: DistillState, xt: Tensor4D, timesteps: number[], condition: Tensor3D, target: Tensor4D): { loss: number; grads: NamedGrads } {
  const params = state.lora.store.named();
  const { value, grads } = variableGrads(() => {
    const official = state.config.loraLossWeighting === 'official';
    const weight = tf.tensor4d(timesteps.map((t) => (official ? Math.sqrt(state.schedule.alphaBar(t)) : 1)), [timesteps.length, 1, 1, 1]);
    const pred = state.lora.with(true, () => state.teacher.forward(xt, timesteps, condition));
    state.observe?.('loraPrediction', pred);
    return tf.losses.meanSquaredError(tf.mul(target, weight), tf.mul(pred, weight)) as tf.Scalar;
  }, [...params.values()]);
  const loss = value.dataSync()[0]!;
  value.dispose();
  return { loss, grads: new Map([...params].map(([name, v]) => [name, grads[v.name]!])) };
}
