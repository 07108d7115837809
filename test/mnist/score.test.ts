import { beforeAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { initBackend } from '../../src/backend.ts';
import { loadSplit } from '../../src/mnist/dataset.ts';
import { DEFAULT_CLASSIFIER_DIR } from '../../src/mnist/classifier.ts';
import { promptIndexOfImages } from '../../src/mnist/prompts.ts';
import { Scorer } from '../../src/mnist/score.ts';
import { normalSampler } from '../../src/util/rng.ts';

const shipped = existsSync(join(DEFAULT_CLASSIFIER_DIR, 'model.safetensors'));

describe.skipIf(!shipped)('scoreSamples', () => {
  let scorer: Scorer;
  beforeAll(async () => {
    await initBackend('wasm');
    scorer = await Scorer.create();
  });

  it('real train digits with their own prompts: attributes match exactly, digits mostly, FD is low', () => {
    const train = loadSplit('train', 300);
    const s = scorer.score(train.images, promptIndexOfImages(train));
    expect(s.n).toBe(300);
    expect(s.thickness_acc).toBe(1);
    expect(s.slant_acc).toBe(1);
    expect(s.digit_acc).toBeGreaterThan(0.97);
    const next = normalSampler(5);
    const noise = new Float32Array(300 * 784).map(() => next());
    const bad = scorer.score(noise, promptIndexOfImages(train));
    expect(bad.fd).toBeGreaterThan(5 * s.fd);
    expect(bad.digit_acc).toBeLessThan(0.3);
  });

  it('refuses mismatched lengths and the null prompt', () => {
    const imgs = loadSplit('heldout', 4).images;
    expect(() => scorer.score(imgs, new Int32Array(3))).toThrow(/4 images but 3 prompt indices/);
    expect(() => scorer.score(imgs, Int32Array.from([0, 1, 2, 90]))).toThrow(/prompt index 90/);
  });
});
