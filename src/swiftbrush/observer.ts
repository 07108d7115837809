/**
 * A window onto the intermediate tensors of a micro-step, for tools that report them
 * (`swiftbrush step` writes them next to a reference's). The operators hand each tensor to the
 * observer as they compute it; the tensor is only valid during the call (it may live inside a
 * tf.tidy or a gradient tape), so an observer copies what it keeps. Without an observer nothing
 * is copied and nothing changes.
 */
import type { Tensor } from '../tf.ts';

/** The intermediates of one micro-step, NHWC, in the order the operators compute them. */
export type ObservedTensor =
  /** x̂0 = f_θ(z, y) (studentForward). */
  | 'x0'
  /** x̂_t = √ᾱ_t x̂0 + σ_t ε (noiseAtT). */
  | 'noisyX0'
  /** CFG-guided ε of the frozen teacher and of the LoRA teacher (teacherCFG). */
  | 'epsTeacher'
  | 'epsLora'
  /** The score gradient g (vsdUpdate). */
  | 'scoreGradient'
  /** x̂_t′ = √ᾱ_t′ sg(x̂0) + σ_t′ ε′ (noiseAtTPrime). */
  | 'loraNoisyX0'
  /** The LoRA teacher's raw prediction ε_φ(x̂_t′, t′, c) (or v) inside its loss (loraUpdate). */
  | 'loraPrediction';

export type StepObserver = (name: ObservedTensor, tensor: Tensor) => void;
