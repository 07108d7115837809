import { beforeAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../../src/backend.ts';
import { loadSplit } from '../../src/mnist/dataset.ts';
import { accuracy, DEFAULT_CLASSIFIER_DIR, defaultConfig, DigitClassifier } from '../../src/mnist/classifier.ts';

beforeAll(async () => {
  await initBackend('wasm');
});

describe('digit classifier', () => {
  it('trains (loss falls), and save → load (PyTorch layouts) reproduces its outputs', async () => {
    const train = loadSplit('train', 640);
    const c = DigitClassifier.init(defaultConfig([4, 8], 16), 1);
    const losses = c.train(train, { epochs: 3, batchSize: 32, lr: 3e-3 });
    expect(losses[2]!).toBeLessThan(losses[0]!);
    const probe = loadSplit('heldout', 50).images;
    const before = c.run(probe);
    const dir = await mkdtemp(join(tmpdir(), 'sb-cls-'));
    try {
      await c.save(dir, { note: 'test' });
      const d = await DigitClassifier.load(dir);
      const after = d.run(probe);
      expect(d.featureDim).toBe(16);
      for (let i = 0; i < before.logits.length; i++) expect(after.logits[i]).toBeCloseTo(before.logits[i]!, 5);
      for (let i = 0; i < before.features.length; i++) expect(after.features[i]).toBeCloseTo(before.features[i]!, 5);
      d.dispose();
    } finally {
      await rm(dir, { recursive: true, force: true });
      c.dispose();
    }
  });

  it.skipIf(!existsSync(join(DEFAULT_CLASSIFIER_DIR, 'model.safetensors')))('the shipped classifier is accurate on held-out digits and clamps its input', async () => {
    const c = await DigitClassifier.load();
    const held = loadSplit('heldout', 300);
    const { features, digits } = c.featuresAndDigits(held.images);
    expect(features.length).toBe(300 * c.featureDim);
    expect(accuracy(digits, held.labels)).toBeGreaterThanOrEqual(0.97);
    const scaled = held.images.map((v) => (v === -1 ? -4 : v === 1 ? 3 : v)); // overshoot: clamping brings back the same image
    expect(Array.from(c.predictDigits(scaled))).toEqual(Array.from(digits));
    c.dispose();
  });
});
