/**
 * keepBestStudent on the shipped MNIST teacher: validates on its schedule, saves the lowest-FD
 * student as a diffusers UNet folder, and a worse student later leaves that folder as it was.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lastValueFrom, from, toArray } from 'rxjs';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tf } from '../../src/tf.ts';
import { initBackend } from '../../src/backend.ts';
import { createDistillState, disposeDistillState, OFFICIAL_DEFAULTS, type DistillState } from '../../src/operators/state.ts';
import type { StepContext } from '../../src/operators/context.ts';
import { keepBestStudent, type Validated } from '../../src/eval/keep_best_student.ts';
import { mnistConditions } from '../../src/eval/evaluate.ts';
import { Scorer } from '../../src/mnist/score.ts';
import { readSafetensors } from '../../src/models/safetensors.ts';
import { EMBEDDINGS } from '../operators/helpers.ts';

const TEACHER = new URL('../../data/teacher', import.meta.url).pathname;
const hollow = (step: number): StepContext => ({ microStep: step, step, windowIndex: 0, closesWindow: true, prompts: [], position: { epoch: 0, batchIndex: step }, tensors: {}, metrics: {} });

describe('keepBestStudent', () => {
  let state: DistillState;
  let scorer: Scorer;
  beforeAll(async () => {
    await initBackend('wasm');
    const conditions = await mnistConditions(EMBEDDINGS);
    state = await createDistillState({ teacherDir: TEACHER, nullEmbeds: conditions.nullEmbed, embedShape: conditions.shape, config: { ...OFFICIAL_DEFAULTS, loraRank: 2, loraAlpha: 2 } });
    scorer = await Scorer.create();
  }, 120_000);
  afterAll(() => {
    disposeDistillState(state);
    scorer.dispose();
  });

  it('saves the lowest-FD student; a worse one later does not replace it', async () => {
    const out = await mkdtemp(join(tmpdir(), 'sb-best-'));
    const conditions = await mnistConditions(EMBEDDINGS);
    const op = keepBestStudent(state, { out, every: 2, n: 36, seed: 1000, conditions, scorer });
    const weightsFile = join(out, 'unet', 'diffusion_pytorch_model.safetensors');
    // steps 1 and 3 are not validated (every 2); step 2 is, with the teacher's own weights
    await lastValueFrom(from([hollow(1), hollow(2), hollow(3)]).pipe(op, toArray()));
    const first = JSON.parse(await readFile(join(out, 'best.json'), 'utf8')) as Validated;
    expect(first).toMatchObject({ step: 2, n: 36, best: true });
    expect(first.fd).toBeGreaterThan(0);
    const saved = (await readSafetensors(weightsFile)).tensors.get('conv_out.bias')!.data as Float32Array;
    // ruin the student: its FD gets worse, so best/ keeps step 2
    const bias = state.student.store.named().get('conv_out.bias')!;
    const before = bias.dataSync().slice();
    bias.assign(tf.add(bias, 0.5));
    await lastValueFrom(from([hollow(4)]).pipe(op, toArray()));
    bias.assign(tf.tensor(before, bias.shape));
    const lines = (await readFile(join(out, 'validation.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Validated);
    expect(lines.map((l) => [l.step, l.best])).toEqual([[2, true], [4, false]]);
    expect(lines[1]!.fd).toBeGreaterThan(lines[0]!.fd);
    expect(JSON.parse(await readFile(join(out, 'best.json'), 'utf8'))).toEqual(first);
    expect((await readSafetensors(weightsFile)).tensors.get('conv_out.bias')!.data).toEqual(saved);
  }, 240_000);
});
