/**
 * Scores generated digits against what their prompts asked for, with the shipped classifier:
 *   - fd: Fréchet distance between the samples' classifier features and the 1,000 HELD-OUT real
 *     digits' features (the FID analogue; lower is better; it depends on N, so compare equal N);
 *   - digit_acc: classifier digit == the prompt's digit;
 *   - thickness_acc / slant_acc: the re-measured thickness / slant bin == the prompt's bin;
 *   - n: number of samples.
 * Images are [N, 28, 28, 1] (NHWC) in the model range [-1, 1]; with one channel this is the same
 * memory as [N, 1, 28, 28] (NCHW). They are clamped to [-1, 1] before scoring (NaN → background).
 */
import { clampModelRange, IMAGE_PIXELS, loadMnist, subset } from './dataset.ts';
import { measureAttributes } from './attributes.ts';
import { accuracy, DigitClassifier } from './classifier.ts';
import { frechetDistanceFromStats, gaussianStats, type Gaussian } from './frechet.ts';
import { NUM_PROMPTS, PROMPTS } from './prompts.ts';

export interface SampleScore {
  fd: number;
  digit_acc: number;
  thickness_acc: number;
  slant_acc: number;
  n: number;
}

export class Scorer {
  private constructor(readonly classifier: DigitClassifier, readonly reference: Gaussian, private readonly ownsClassifier: boolean) {}

  /** Loads the classifier (default data/classifier, or the one given) and the held-out reference statistics. */
  static async create(opts: { classifier?: DigitClassifier; classifierDir?: string } = {}): Promise<Scorer> {
    const classifier = opts.classifier ?? (await DigitClassifier.load(opts.classifierDir));
    const heldout = loadMnist().heldout;
    const reference = gaussianStats(classifier.features(heldout.images), classifier.featureDim);
    return new Scorer(classifier, reference, !opts.classifier);
  }

  /** Scores N images against the prompts (indices 0…89 into PROMPTS) they were generated from. */
  score(images: Float32Array, promptIndex: Int32Array): SampleScore {
    if (images.length % IMAGE_PIXELS !== 0) throw new Error(`scoreSamples: images length ${images.length} is not a multiple of 28*28`);
    const n = images.length / IMAGE_PIXELS;
    if (promptIndex.length !== n) throw new Error(`scoreSamples: ${n} images but ${promptIndex.length} prompt indices`);
    if (n < 2) throw new Error(`scoreSamples: need at least 2 images, got ${n}`);
    const digit = new Int32Array(n), thick = new Int32Array(n), slant = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const p = promptIndex[i]!;
      if (!Number.isInteger(p) || p < 0 || p >= NUM_PROMPTS) {
        throw new Error(`scoreSamples: prompt index ${p} of sample ${i} is not one of the ${NUM_PROMPTS} MNIST prompts (the null prompt cannot be scored)`);
      }
      const spec = PROMPTS[p]!;
      digit[i] = spec.digit;
      thick[i] = spec.thicknessBin;
      slant[i] = spec.slantBin;
    }
    const clamped = clampModelRange(images);
    const { features, digits } = this.classifier.featuresAndDigits(clamped);
    const attrs = measureAttributes(clamped);
    return {
      fd: frechetDistanceFromStats(gaussianStats(features, this.classifier.featureDim), this.reference),
      digit_acc: accuracy(digits, digit),
      thickness_acc: accuracy(attrs.thicknessBin, thick),
      slant_acc: accuracy(attrs.slantBin, slant),
      n,
    };
  }

  /**
   * The floor: the first `n` REAL train digits scored as if generated from their own prompts, i.e.
   * real train vs real held-out FD (and the classifier's / attribute measure's agreement on real data).
   */
  realFloor(n = 1000): SampleScore {
    const train = subset(loadMnist().train, 0, n);
    const { thicknessBin, slantBin } = measureAttributes(train.images);
    const idx = new Int32Array(n);
    for (let i = 0; i < n; i++) idx[i] = train.labels[i]! * 9 + thicknessBin[i]! * 3 + slantBin[i]!;
    return this.score(train.images, idx);
  }

  dispose(): void {
    if (this.ownsClassifier) this.classifier.dispose();
  }
}

/** One-shot scoring with the shipped classifier (call `initBackend` first). For repeated use keep a `Scorer`. */
export async function scoreSamples(images: Float32Array, promptIndex: Int32Array, opts: { classifier?: DigitClassifier; classifierDir?: string } = {}): Promise<SampleScore> {
  const scorer = await Scorer.create(opts);
  try {
    return scorer.score(images, promptIndex);
  } finally {
    scorer.dispose();
  }
}
