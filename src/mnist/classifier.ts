/**
 * The evaluation classifier of the embedded default: a small CNN trained on the TRAIN split only,
 * shipped as data/classifier/model.safetensors + config.json. It gives digit predictions (digit
 * accuracy of generated images) and penultimate-layer features (the space of the Fréchet distance,
 * our FID analogue).
 *
 * Architecture (PyTorch terms, so the file loads into the equivalent nn.Module unchanged):
 *   conv1 Conv2d(1, 16, 3, padding=1) → ReLU → MaxPool2d(2)      28² → 14²
 *   conv2 Conv2d(16, 32, 3, padding=1) → ReLU → MaxPool2d(2)     14² → 7²
 *   flatten (C, H, W order) → fc1 Linear(1568, 128) → ReLU      = FEATURES [N, 128]
 *   fc2 Linear(128, 10)                                          = logits
 * Weights are stored in PyTorch layouts (conv [out, in, kh, kw], linear [out, in]; fc1's input
 * columns in NCHW flatten order); input is [N, 1, 28, 28] (PyTorch) / [N, 28, 28, 1] (here) in the
 * model pixel range [-1, 1], clamped first.
 *
 * Training: Adam (lr 1e-3 with cosine decay to 5e-5, β 0.9/0.999), batch 32, seeded He-normal init,
 * random ±2 px shifts of the train digits (generated digits are not always centred), 10 epochs.
 * Deterministic given the seed on one backend.
 */
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { tf } from '../tf.ts';
import type { Tensor, Tensor2D, Tensor4D, Variable } from '../tf.ts';
import { readSafetensors, writeSafetensors } from '../models/safetensors.ts';
import { writeJsonAtomic } from '../util/fs.ts';
import { clampModelRange, IMAGE_PIXELS, IMAGE_SIZE, type MnistSplit } from './dataset.ts';
import { mulberry32, normalSampler, permutation } from '../util/rng.ts';
import { DEFAULT_CLASSIFIER_DIR } from '../default_data.ts';

/** data/classifier of this package (independent of the working directory). */
export { DEFAULT_CLASSIFIER_DIR } from '../default_data.ts';

export interface ClassifierConfig {
  name: 'swiftbrush-mnist-classifier';
  channels: [number, number];
  hidden: number;
  num_classes: number;
  input: { shape: [number, number, number]; range: [number, number]; layout_pytorch: string };
  features: string;
  pytorch: string;
  training?: Record<string, unknown>;
}

export function defaultConfig(channels: [number, number] = [16, 32], hidden = 128): ClassifierConfig {
  return {
    name: 'swiftbrush-mnist-classifier',
    channels,
    hidden,
    num_classes: 10,
    input: { shape: [1, IMAGE_SIZE, IMAGE_SIZE], range: [-1, 1], layout_pytorch: 'NCHW, clamped to [-1, 1]' },
    features: `ReLU(fc1(x)): the ${hidden} penultimate activations`,
    pytorch:
      `nn.Sequential(OrderedDict(conv1=nn.Conv2d(1,${channels[0]},3,padding=1), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2), ` +
      `conv2=nn.Conv2d(${channels[0]},${channels[1]},3,padding=1), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2), flatten=nn.Flatten(), ` +
      `fc1=nn.Linear(${channels[1] * 49},${hidden}), relu3=nn.ReLU(), fc2=nn.Linear(${hidden},10))); features = model[:-1](x)`,
  };
}

/** tfjs-layout parameters: conv [kh, kw, in, out], dense [in, out] with NHWC-flatten rows. */
type Params<T extends Tensor = Tensor> = { conv1w: T; conv1b: T; conv2w: T; conv2b: T; fc1w: T; fc1b: T; fc2w: T; fc2b: T };
const PARAM_NAMES = ['conv1w', 'conv1b', 'conv2w', 'conv2b', 'fc1w', 'fc1b', 'fc2w', 'fc2b'] as const;

function forward(p: Params, x: Tensor4D): { features: Tensor2D; logits: Tensor2D } {
  let h = tf.relu(tf.conv2d(x, p.conv1w as Tensor4D, 1, 'same').add(p.conv1b)) as Tensor4D;
  h = tf.maxPool(h, 2, 2, 'valid');
  h = tf.relu(tf.conv2d(h, p.conv2w as Tensor4D, 1, 'same').add(p.conv2b)) as Tensor4D;
  h = tf.maxPool(h, 2, 2, 'valid');
  const flat = h.reshape([h.shape[0], -1]) as Tensor2D;
  const features = tf.relu(tf.matMul(flat, p.fc1w as Tensor2D).add(p.fc1b)) as Tensor2D;
  const logits = tf.matMul(features, p.fc2w as Tensor2D).add(p.fc2b) as Tensor2D;
  return { features, logits };
}

// ---- PyTorch layout conversion ----------------------------------------------------------------

/** [kh, kw, in, out] → [out, in, kh, kw] */
function convToTorch(w: Float32Array, kh: number, kw: number, cin: number, cout: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let a = 0; a < kh; a++) for (let b = 0; b < kw; b++) for (let i = 0; i < cin; i++) for (let o = 0; o < cout; o++) {
    out[((o * cin + i) * kh + a) * kw + b] = w[((a * kw + b) * cin + i) * cout + o]!;
  }
  return out;
}

function convFromTorch(w: Float32Array, kh: number, kw: number, cin: number, cout: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let a = 0; a < kh; a++) for (let b = 0; b < kw; b++) for (let i = 0; i < cin; i++) for (let o = 0; o < cout; o++) {
    out[((a * kw + b) * cin + i) * cout + o] = w[((o * cin + i) * kh + a) * kw + b]!;
  }
  return out;
}

/** Column of dense row `r` in PyTorch's Linear: NHWC flatten order (h, w, c) → NCHW (c, h, w) when `hwc` is given. */
function torchColumn(r: number, hwc?: [number, number, number]): number {
  if (!hwc) return r;
  const [H, W, C] = hwc;
  const c = r % C, x = Math.floor(r / C) % W, y = Math.floor(r / (C * W));
  return (c * H + y) * W + x;
}

/**
 * Dense [in, out] (rows in NHWC flatten order h, w, c when `hwc` is given) → Linear [out, in] (columns
 * in NCHW flatten order c, h, w).
 */
function denseToTorch(w: Float32Array, nin: number, nout: number, hwc?: [number, number, number]): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < nin; r++) {
    const col = torchColumn(r, hwc);
    for (let o = 0; o < nout; o++) out[o * nin + col] = w[r * nout + o]!;
  }
  return out;
}

function denseFromTorch(w: Float32Array, nin: number, nout: number, hwc?: [number, number, number]): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < nin; r++) {
    const col = torchColumn(r, hwc);
    for (let o = 0; o < nout; o++) out[r * nout + o] = w[o * nin + col]!;
  }
  return out;
}

// ---- the classifier -----------------------------------------------------------------------------

export class DigitClassifier {
  private constructor(readonly config: ClassifierConfig, private readonly params: Params) {}

  /** Seeded He-normal weights, zero biases. */
  static init(config: ClassifierConfig = defaultConfig(), seed = 0): DigitClassifier {
    const next = normalSampler(seed);
    const [c1, c2] = config.channels;
    const he = (shape: number[], fanIn: number) => {
      const n = shape.reduce((a, b) => a * b, 1);
      const d = new Float32Array(n);
      const std = Math.sqrt(2 / fanIn);
      for (let i = 0; i < n; i++) d[i] = next() * std;
      return tf.tensor(d, shape);
    };
    const flat = c2 * 7 * 7;
    return new DigitClassifier(config, {
      conv1w: he([3, 3, 1, c1], 9), conv1b: tf.zeros([c1]),
      conv2w: he([3, 3, c1, c2], 9 * c1), conv2b: tf.zeros([c2]),
      fc1w: he([flat, config.hidden], flat), fc1b: tf.zeros([config.hidden]),
      fc2w: he([config.hidden, config.num_classes], config.hidden), fc2b: tf.zeros([config.num_classes]),
    });
  }

  /** Loads data/classifier (or `dir`): model.safetensors (PyTorch layouts) + config.json. */
  static async load(dir: string = DEFAULT_CLASSIFIER_DIR): Promise<DigitClassifier> {
    let config: ClassifierConfig;
    try {
      config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as ClassifierConfig;
    } catch (err) {
      throw new Error(`cannot load the classifier config ${join(dir, 'config.json')} (train it with 'swiftbrush train-classifier'): ${err instanceof Error ? err.message : String(err)}`);
    }
    const file = await readSafetensors(join(dir, 'model.safetensors'));
    const get = (name: string, shape: number[]): Float32Array => {
      const t = file.tensors.get(name);
      if (!t) throw new Error(`${join(dir, 'model.safetensors')}: missing tensor '${name}'`);
      if (t.shape.join(',') !== shape.join(',')) throw new Error(`${join(dir, 'model.safetensors')}: '${name}' has shape [${t.shape}], expected [${shape}]`);
      return t.data as Float32Array;
    };
    const [c1, c2] = config.channels;
    const H = config.hidden, K = config.num_classes, flat = c2 * 49;
    return new DigitClassifier(config, {
      conv1w: tf.tensor(convFromTorch(get('conv1.weight', [c1, 1, 3, 3]), 3, 3, 1, c1), [3, 3, 1, c1]),
      conv1b: tf.tensor(get('conv1.bias', [c1])),
      conv2w: tf.tensor(convFromTorch(get('conv2.weight', [c2, c1, 3, 3]), 3, 3, c1, c2), [3, 3, c1, c2]),
      conv2b: tf.tensor(get('conv2.bias', [c2])),
      fc1w: tf.tensor(denseFromTorch(get('fc1.weight', [H, flat]), flat, H, [7, 7, c2]), [flat, H]),
      fc1b: tf.tensor(get('fc1.bias', [H])),
      fc2w: tf.tensor(denseFromTorch(get('fc2.weight', [K, H]), H, K), [H, K]),
      fc2b: tf.tensor(get('fc2.bias', [K])),
    });
  }

  get featureDim(): number {
    return this.config.hidden;
  }

  async save(dir: string, training?: Record<string, unknown>): Promise<void> {
    const [c1, c2] = this.config.channels;
    const H = this.config.hidden, K = this.config.num_classes, flat = c2 * 49;
    const d = (t: Tensor) => t.dataSync() as Float32Array;
    const p = this.params;
    await writeSafetensors(
      join(dir, 'model.safetensors'),
      {
        'conv1.weight': { dtype: 'F32', shape: [c1, 1, 3, 3], data: convToTorch(d(p.conv1w), 3, 3, 1, c1) },
        'conv1.bias': { dtype: 'F32', shape: [c1], data: d(p.conv1b) },
        'conv2.weight': { dtype: 'F32', shape: [c2, c1, 3, 3], data: convToTorch(d(p.conv2w), 3, 3, c1, c2) },
        'conv2.bias': { dtype: 'F32', shape: [c2], data: d(p.conv2b) },
        'fc1.weight': { dtype: 'F32', shape: [H, flat], data: denseToTorch(d(p.fc1w), flat, H, [7, 7, c2]) },
        'fc1.bias': { dtype: 'F32', shape: [H], data: d(p.fc1b) },
        'fc2.weight': { dtype: 'F32', shape: [K, H], data: denseToTorch(d(p.fc2w), H, K) },
        'fc2.bias': { dtype: 'F32', shape: [K], data: d(p.fc2b) },
      },
      { format: 'pt', model: 'swiftbrush-mnist-classifier' },
    );
    await writeJsonAtomic(join(dir, 'config.json'), training ? { ...this.config, training } : this.config);
  }

  /** Runs the network over [N,28,28,1] images in [-1, 1] (clamped), in batches. */
  run(images: Float32Array, batchSize = 500): { features: Float32Array; logits: Float32Array; n: number } {
    if (images.length % IMAGE_PIXELS !== 0) throw new Error(`images: length ${images.length} is not a multiple of 28*28`);
    const n = images.length / IMAGE_PIXELS;
    const F = this.config.hidden, K = this.config.num_classes;
    const features = new Float32Array(n * F);
    const logits = new Float32Array(n * K);
    const clamped = clampModelRange(images);
    for (let s = 0; s < n; s += batchSize) {
      const e = Math.min(n, s + batchSize);
      const [f, l] = tf.tidy(() => {
        const x = tf.tensor4d(clamped.subarray(s * IMAGE_PIXELS, e * IMAGE_PIXELS), [e - s, IMAGE_SIZE, IMAGE_SIZE, 1]);
        const out = forward(this.params, x);
        return [out.features, out.logits];
      });
      features.set(f!.dataSync(), s * F);
      logits.set(l!.dataSync(), s * K);
      tf.dispose([f!, l!]);
    }
    return { features, logits, n };
  }

  /** Penultimate features [N, F] (flattened row-major). */
  features(images: Float32Array): Float32Array {
    return this.run(images).features;
  }

  /** Argmax digit per image. */
  predictDigits(images: Float32Array): Int32Array {
    return argmax(this.run(images).logits, this.config.num_classes);
  }

  /** Features and predicted digits in one pass. */
  featuresAndDigits(images: Float32Array): { features: Float32Array; digits: Int32Array } {
    const { features, logits } = this.run(images);
    return { features, digits: argmax(logits, this.config.num_classes) };
  }

  /** Trains in place on a split (the train split!). Returns per-epoch mean loss. */
  train(
    split: Pick<MnistSplit, 'images' | 'labels' | 'n'>,
    opts: { epochs?: number; batchSize?: number; lr?: number; seed?: number; shift?: number; onEpoch?: (epoch: number, loss: number, seconds: number) => void } = {},
  ): number[] {
    const { epochs = 10, batchSize = 32, lr = 1e-3, seed = 0, shift = 2 } = opts;
    const vars = {} as Params<Variable>;
    for (const k of PARAM_NAMES) vars[k] = tf.variable(this.params[k], true, `classifier.${k}`);
    const optimizer = tf.train.adam(lr, 0.9, 0.999, 1e-8);
    // cosine decay of the learning rate from lr to 0.05·lr over all steps (tfjs' Adam reads the field each step)
    const totalSteps = epochs * Math.floor(split.n / batchSize);
    const setLr = (step: number) => {
      (optimizer as unknown as { learningRate: number }).learningRate = lr * (0.05 + 0.95 * 0.5 * (1 + Math.cos((Math.PI * step) / totalSteps)));
    };
    let step = 0;
    const rand = mulberry32(seed + 1);
    const K = this.config.num_classes;
    const losses: number[] = [];
    const batch = new Float32Array(batchSize * IMAGE_PIXELS);
    for (let epoch = 0; epoch < epochs; epoch++) {
      const t0 = performance.now();
      const order = permutation(split.n, seed * 1000 + epoch);
      let total = 0, count = 0;
      for (let s = 0; s + batchSize <= split.n; s += batchSize) {
        const labels = new Int32Array(batchSize);
        for (let b = 0; b < batchSize; b++) {
          const i = order[s + b]!;
          labels[b] = split.labels[i]!;
          shiftInto(split.images, i, batch, b, Math.round((rand() * 2 - 1) * shift), Math.round((rand() * 2 - 1) * shift));
        }
        setLr(step++);
        const loss = optimizer.minimize(() => {
          const x = tf.tensor4d(clampModelRange(batch), [batchSize, IMAGE_SIZE, IMAGE_SIZE, 1]);
          const y = tf.oneHot(tf.tensor1d(labels, 'int32'), K);
          return tf.losses.softmaxCrossEntropy(y, forward(vars, x).logits) as tf.Scalar;
        }, true);
        total += loss!.dataSync()[0]!;
        count++;
        loss!.dispose();
      }
      losses.push(total / count);
      opts.onEpoch?.(epoch, total / count, (performance.now() - t0) / 1000);
    }
    for (const k of PARAM_NAMES) {
      this.params[k].dispose();
      this.params[k] = tf.clone(vars[k]);
      vars[k].dispose();
    }
    optimizer.dispose();
    return losses;
  }

  dispose(): void {
    tf.dispose(Object.values(this.params));
  }
}

/** Copies image `i` of `src` into slot `b` of `dst`, shifted by (dy, dx) with -1 fill. */
function shiftInto(src: Float32Array, i: number, dst: Float32Array, b: number, dy: number, dx: number): void {
  const so = i * IMAGE_PIXELS, d0 = b * IMAGE_PIXELS;
  for (let r = 0; r < IMAGE_SIZE; r++) {
    const sr = r - dy;
    for (let c = 0; c < IMAGE_SIZE; c++) {
      const sc = c - dx;
      dst[d0 + r * IMAGE_SIZE + c] = sr >= 0 && sr < IMAGE_SIZE && sc >= 0 && sc < IMAGE_SIZE ? src[so + sr * IMAGE_SIZE + sc]! : -1;
    }
  }
}

export function argmax(logits: Float32Array, k: number): Int32Array {
  const n = logits.length / k;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let j = 1; j < k; j++) if (logits[i * k + j]! > logits[i * k + best]!) best = j;
    out[i] = best;
  }
  return out;
}

/** Fraction of equal entries. */
export function accuracy(pred: Int32Array, truth: Int32Array): number {
  let ok = 0;
  for (let i = 0; i < pred.length; i++) if (pred[i] === truth[i]) ok++;
  return pred.length === 0 ? NaN : ok / pred.length;
}
