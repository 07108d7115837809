/**
 * The stream adds no error: optimiser steps taken through the operator chain equal a plain,
 * hand-written loop of the same math (same seeds), written the way the PyTorch reference is:
 * ONE tape over the student forward and L = 0.5·mean((x̂0 − sg(x̂0 − g))²), no recomputation.
 */
import { describe, expect, it, beforeAll } from 'vitest';
import { cp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { from, lastValueFrom, toArray } from 'rxjs';
import { tf } from '../../src/tf.ts';
import type { Tensor, Tensor3D, Tensor4D, Variable } from '../../src/tf.ts';
import { swiftbrushStep, toStepContext } from '../../src/operators/pipeline.ts';
import { disposeDistillState, type DistillConfig, type DistillState } from '../../src/operators/state.ts';
import { referenceRun } from '../../src/swiftbrush/reference_step.ts';
import { latentShape } from '../../src/swiftbrush/math.ts';
import { clipGradNorm } from '../../src/models/optim.ts';
import { fakeBatch, makeState, makeTinyTeacher, maxAbsDiff, testConfig } from './helpers.ts';

/** torch's .detach(): identity forward, zero gradient. */
const stopGradient = tf.customGrad(((x: Tensor) => ({ value: tf.clone(x), gradFunc: (dy: Tensor) => tf.zerosLike(dy) })) as never) as <T extends Tensor>(x: T) => T;

/** The reference loop: PyTorch's formulation, micro-batch by micro-batch. */
function handWrittenRun(s: DistillState, batches: ReturnType<typeof fakeBatch>[]) {
  const c = s.config;
  const k = c.gradAccum;
  const T = s.schedule.numTrainTimesteps;
  const studentVars = s.student.store.named();
  const loraVars = s.lora.store.named();
  const acc = { student: new Map<string, Tensor>(), lora: new Map<string, Tensor>() };
  const accumulate = (into: Map<string, Tensor>, vars: Map<string, Variable>, grads: Record<string, Tensor>) => {
    for (const [name, v] of vars) {
      const g = tf.div(grads[v.name]!, k);
      const prev = into.get(name);
      into.set(name, tf.keep(prev ? tf.add(prev, g) : g)); // kept across micro-batches
      prev?.dispose();
    }
  };
  batches.forEach((batch, m) => {
    tf.tidy(() => {
      const y = tf.tensor3d(batch.embeds, batch.shape);
      const b = batch.shape[0];
      const z = s.draws.latents(m, [b, ...latentShape(s)]);
      const t = s.draws.timesteps(m, b, c.tMin, c.tMax);
      const eps = s.draws.noise(m, z.shape);
      let x0Detached: Tensor4D | undefined;
      // Student: one tape over the whole VSD loss, as in the official script.
      const { grads } = tf.variableGrads(() => {
        const last = new Array(b).fill(T - 1);
        const x0 = s.schedule.predictOriginal(s.student.forward(z, last, y), z, last) as Tensor4D;
        x0Detached = tf.keep(tf.clone(x0)) as Tensor4D;
        const xt = s.schedule.addNoise(stopGradient(x0), eps, t) as Tensor4D;
        const guided = (lora: boolean, cond: Tensor3D) =>
          s.lora.with(lora, () => s.schedule.predictEpsilon(s.teacher.forward(xt, t, cond), xt, t));
        const y0 = tf.tile(s.nullEmbeds, [b, 1, 1]) as Tensor3D;
        const cfg = (lora: boolean) => {
          const u = guided(lora, y0);
          return tf.add(u, tf.mul(tf.sub(guided(lora, y), u), c.guidanceScale));
        };
        const epsTeacher = cfg(false);
        // sdsWeight λ: the fake score is (1 − λ)·ε_lora + λ·ε (λ = 1: SDS's ε_teacher − ε).
        const fake = () => tf.add(tf.mul(cfg(true), 1 - c.sdsWeight), tf.mul(eps, c.sdsWeight));
        // official: σ_t² (ε_tea − ε_lora); dmd: (μ_fake − μ_real) / mean|μ_real − x̂0| in x0 space.
        let g: Tensor;
        if (c.vsdWeighting === 'dmd') {
          const x0Of = (e: Tensor) => s.schedule.predictOriginal(e, xt, t);
          const muReal = x0Of(epsTeacher);
          const muFake = x0Of(fake());
          g = stopGradient(tf.div(tf.sub(muFake, muReal), tf.mean(tf.abs(tf.sub(muReal, stopGradient(x0))), [1, 2, 3], true)));
        } else {
          const sigma2 = tf.tensor4d(t.map((tt) => 1 - s.schedule.alphaBar(tt)), [b, 1, 1, 1]);
          g = stopGradient(tf.mul(sigma2, tf.sub(epsTeacher, fake())));
        }
        const target = stopGradient(tf.sub(x0, g));
        return tf.mul(tf.mean(tf.square(tf.sub(x0, target))), 0.5) as tf.Scalar;
      }, [...studentVars.values()]);
      accumulate(acc.student, studentVars, grads);
      if (m % k === k - 1) stepAdam(s, 'student', acc.student);
      // LoRA teacher on the detached student output.
      const t2 = s.draws.loraTimesteps(m, b, 0, T - 1);
      const eps2 = s.draws.loraNoise(m, z.shape);
      const useNull = s.draws.loraUsesNullPrompt(m, c.loraNullPromptProb);
      const xt2 = s.schedule.addNoise(x0Detached!, eps2, t2) as Tensor4D;
      const cond = useNull ? (tf.tile(s.nullEmbeds, [b, 1, 1]) as Tensor3D) : y;
      const { grads: lg } = tf.variableGrads(() => {
        const w = tf.tensor4d(t2.map((tt) => Math.sqrt(s.schedule.alphaBar(tt))), [b, 1, 1, 1]);
        const pred = s.lora.with(true, () => s.teacher.forward(xt2, t2, cond));
        return tf.mean(tf.square(tf.sub(tf.mul(w, pred), tf.mul(w, eps2)))) as tf.Scalar;
      }, [...loraVars.values()]);
      accumulate(acc.lora, loraVars, lg);
      if (m % k === k - 1) stepAdam(s, 'lora', acc.lora);
      x0Detached!.dispose();
    });
  });
}

function stepAdam(s: DistillState, which: 'student' | 'lora', acc: Map<string, Tensor>) {
  const { grads } = clipGradNorm(acc, s.config.maxGradNorm);
  (which === 'student' ? s.studentOptimizer : s.loraOptimizer).apply(grads);
  tf.dispose([...grads.values(), ...acc.values()]);
  acc.clear();
}

function snapshot(s: DistillState): Float32Array[] {
  return [...s.student.parameters(), ...s.lora.parameters()].map((v) => v.dataSync().slice() as Float32Array);
}

describe('one SwiftBrush step through the stream equals the hand-written loop', () => {
  let teacher: string;
  beforeAll(async () => {
    teacher = await makeTinyTeacher();
  });

  for (const [gradAccum, vsdWeighting, sdsWeight] of [[1, 'official', 0], [2, 'official', 0], [2, 'dmd', 0], [2, 'official', 0.3]] as const) {
    it(`gradient accumulation k=${gradAccum}, ${vsdWeighting} weighting, SDS weight ${sdsWeight}: student and LoRA weights agree to 1e-5`, async () => {
      // Adam's first steps turn any gradient much larger than eps into ±lr, so round-off in gradients
      // of ~1e-7 would flip whole steps; a larger eps keeps the comparison about the stream's math.
      const config = testConfig({ gradAccum, vsdWeighting, sdsWeight, emaDecay: 0, adamEps: 1e-3 });
      const batches = Array.from({ length: 2 * gradAccum }, (_, i) => fakeBatch(i));
      const stream = await makeState(teacher, config);
      const hand = await makeState(teacher, config);
      try {
        // Identical, non-zero LoRA B in both (B = 0 makes the first score gradient exactly zero).
        const lb = stream.lora.parameters().map((v, i) => tf.tidy(() => tf.randomNormal(v.shape, 0, 0.05, 'float32', 100 + i)));
        stream.lora.parameters().forEach((v, i) => v.assign(lb[i]!));
        hand.lora.parameters().forEach((v, i) => v.assign(lb[i]!));
        tf.dispose(lb);

        const before = tf.memory().numTensors;
        const out = await lastValueFrom(from(batches).pipe(toStepContext(gradAccum), swiftbrushStep(stream), toArray()));
        expect(out.map((c) => c.step)).toEqual(batches.map((_, i) => Math.floor((i + 1) / gradAccum)));
        expect(out.every((c) => Object.keys(c.tensors).length === 0)).toBe(true);
        expect(tf.memory().numTensors).toBe(before);
        handWrittenRun(hand, batches);

        const a = snapshot(stream);
        const b = snapshot(hand);
        let worst = 0;
        for (let i = 0; i < a.length; i++) worst = Math.max(worst, maxAbsDiff(a[i]!, b[i]!));
        expect(worst).toBeLessThan(1e-5);
        // And the weights did move (the test would pass trivially otherwise).
        const init = await makeState(teacher, config);
        const moved = maxAbsDiff(a[0]!, init.student.parameters()[0]!.dataSync());
        disposeDistillState(init);
        expect(moved).toBeGreaterThan(1e-5);
      } finally {
        disposeDistillState(stream);
        disposeDistillState(hand);
      }
    });
  }
});

/** Student, LoRA and EMA weights of a state. */
function weights(s: DistillState): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const [name, v] of s.student.store.named()) out.set(`student/${name}`, v.dataSync().slice() as Float32Array);
  for (const [name, v] of s.lora.store.named()) out.set(`lora/${name}`, v.dataSync().slice() as Float32Array);
  for (const [name, v] of s.ema?.shadow ?? []) out.set(`ema/${name}`, v.dataSync().slice() as Float32Array);
  return out;
}

const relDiff = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? (a === b ? 0 : Infinity) : Math.abs(a - b) / Math.max(1e-12, Math.abs(b)));

describe('the reference loop (src/swiftbrush/reference_step.ts) equals the stream for every option', () => {
  let teacher: string;
  let vTeacher: string;
  beforeAll(async () => {
    teacher = await makeTinyTeacher();
    // The same UNet as a v-prediction teacher.
    vTeacher = `${teacher}-v`;
    await cp(teacher, vTeacher, { recursive: true });
    const path = join(vTeacher, 'scheduler', 'scheduler_config.json');
    await writeFile(path, JSON.stringify({ ...JSON.parse(await readFile(path, 'utf8')), prediction_type: 'v_prediction' }));
  });

  const cases: { name: string; v?: boolean; micro: number; first?: number; config: Partial<DistillConfig> }[] = [
    { name: 'studentUpdateEvery 2, linear lr decay after a warm-up step, EMA', micro: 4, config: { studentUpdateEvery: 2, lrWarmupSteps: 1, lrScheduler: 'linear', lrDecaySteps: 3 } },
    {
      name: 'k=2 with a final partial window, dmd + SDS 0.3, epsilon LoRA loss, null prompts, cosine lr, clipping, weight decay',
      micro: 5,
      config: { gradAccum: 2, vsdWeighting: 'dmd', sdsWeight: 0.3, loraLossWeighting: 'epsilon', loraNullPromptProb: 0.5, lrScheduler: 'cosine', lrDecaySteps: 2, maxGradNorm: 0.05, adamWeightDecay: 0.01 },
    },
    { name: 'a v-prediction teacher, resumed at micro-step 3, k=3 windows counted from there', v: true, micro: 4, first: 3, config: { gradAccum: 3, tMin: 0, tMax: 999, guidanceScale: 2 } },
  ];

  for (const c of cases) {
    it(c.name, async () => {
      const config = testConfig({ emaDecay: 0.9, adamEps: 1e-3, ...c.config });
      const dir = c.v ? vTeacher : teacher;
      const first = c.first ?? 0;
      const batches = Array.from({ length: c.micro }, (_, i) => fakeBatch(first + i));
      const stream = await makeState(dir, config);
      const reference = await makeState(dir, config);
      try {
        const lb = stream.lora.parameters().map((v, i) => tf.tidy(() => tf.randomNormal(v.shape, 0, 0.05, 'float32', 100 + i)));
        stream.lora.parameters().forEach((v, i) => v.assign(lb[i]!));
        reference.lora.parameters().forEach((v, i) => v.assign(lb[i]!));
        tf.dispose(lb);
        const before = weights(reference);

        const out = await lastValueFrom(from(batches).pipe(toStepContext(config.gradAccum, first, 0), swiftbrushStep(stream), toArray()));
        const metrics = referenceRun(reference, batches, { firstMicroStep: first, firstStep: 0 });

        // Same metrics per micro-batch, same optimiser step counts.
        out.forEach((ctx, i) => {
          const m = metrics[i]!;
          expect(Object.keys(m).sort(), `micro-batch ${i}`).toEqual(Object.keys(ctx.metrics).sort());
          for (const key of ['lossVsd', 'lossLora', 'gradNormStudent', 'gradNormLora'] as const) expect(relDiff(ctx.metrics[key], m[key]), `micro-batch ${i} ${key}`).toBeLessThan(1e-3);
          expect(ctx.metrics.skippedStudent, `micro-batch ${i}`).toBe(m.skippedStudent);
          expect(ctx.metrics.skippedLora, `micro-batch ${i}`).toBe(m.skippedLora);
        });
        expect(stream.studentOptimizer.step).toBe(reference.studentOptimizer.step);
        expect(stream.loraOptimizer.step).toBe(reference.loraOptimizer.step);
        expect(reference.loraOptimizer.step).toBe(Math.ceil(c.micro / config.gradAccum));
        expect(reference.studentOptimizer.step).toBeGreaterThan(0);

        // Same weights: student, LoRA and EMA.
        const a = weights(stream);
        const b = weights(reference);
        expect([...a.keys()]).toEqual([...b.keys()]);
        let worst = 0;
        let worstKey = '';
        for (const [k, v] of a) {
          const d = maxAbsDiff(v, b.get(k)!);
          if (d > worst) [worst, worstKey] = [d, k];
        }
        expect(worst, worstKey).toBeLessThan(1e-5);
        // And the weights did move (the comparison would pass trivially otherwise).
        expect(maxAbsDiff(b.get('student/conv_out.weight')!, before.get('student/conv_out.weight')!)).toBeGreaterThan(1e-5);
        expect(maxAbsDiff(b.get('lora/' + [...reference.lora.store.named().keys()][0])!, before.get('lora/' + [...reference.lora.store.named().keys()][0])!)).toBeGreaterThan(1e-5);
      } finally {
        disposeDistillState(stream);
        disposeDistillState(reference);
      }
    });
  }
});
