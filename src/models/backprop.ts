/**
 * `variableGrads` as tf.variableGrads computes it, but with a backward walk that frees memory as it
 * goes, as PyTorch's autograd does.
 *
 * tfjs-core's own walk (engine.gradients → backpropagateGradients) keeps every intermediate tensor's
 * gradient and every tensor the forward saved for the backward until the whole backward pass ends, so
 * a training step of a UNet peaks at roughly its saved activations plus a gradient for every
 * intermediate. This walk runs the same tape through the same gradient functions in the same order
 * (the results are bitwise tf.variableGrads', test/models/backprop.test.ts), and:
 *
 * - disposes a node's output gradients as soon as the node has been walked (a tensor is the output of
 *   exactly one tape node, so nothing later reads its gradient);
 * - disposes the tensors the forward saved for a node right after its gradient is computed (they are
 *   reference-counted clones: data shared with live tensors stays);
 * - runs each node's gradient in its own `tidy`, so the eager temporaries of custom gradients do not
 *   pile up until the end;
 * - disposes both addends when a gradient is accumulated;
 * - releases, right after the forward, what the forward saved for kernels whose gradient needs only
 *   shapes (SHAPE_ONLY_GRADIENTS).
 *
 * It records the tape through tfjs-core 4.x's engine members `startTape`, `endTape`, `scopedRun` and
 * `state.activeTape`, private in the typings but public at run time; `tapeEngine()` checks that they
 * exist and names them if a tfjs version lacks them.
 */
import { tf } from '../tf.ts';
import type { NamedTensorMap, Tensor, Variable } from '../tf.ts';

interface TapeNode {
  id: number;
  kernelName: string;
  inputs: Record<string, Tensor>;
  outputs: Tensor[];
  saved?: Tensor[];
  gradient?: (dys: (Tensor | null)[]) => Record<string, () => Tensor>;
}

interface TapeEngine {
  state: { activeTape: TapeNode[] | null; gradientDepth: number };
  startTape(): void;
  endTape(): void;
  scopedRun<T>(start: () => void, end: () => void, f: () => T): T;
  tidy<T>(name: string, f: () => T): T;
}

function tapeEngine(): TapeEngine {
  const engine = tf.engine() as unknown as Partial<TapeEngine>;
  for (const member of ['startTape', 'endTape', 'scopedRun', 'tidy'] as const) {
    if (typeof engine[member] !== 'function') throw new Error(`backprop: this tfjs-core has no engine.${member}() (written for tfjs-core 4.x); use tf.variableGrads instead`);
  }
  if (typeof engine.state?.gradientDepth !== 'number') throw new Error('backprop: this tfjs-core has no engine.state.gradientDepth (written for tfjs-core 4.x)');
  return engine as TapeEngine;
}

/**
 * The value of `f` and its gradients w.r.t. the trainable variables in `vars` (named by variable
 * name, as tf.variableGrads returns them; variables that `f` does not use get none). `f` must return
 * a scalar.
 */
export function variableGrads(f: () => tf.Scalar, vars: Variable[]): { value: tf.Scalar; grads: NamedTensorMap } {
  const engine = tapeEngine();
  // A gradient taken inside another gradient shares its tape: leave that case to tfjs' own walk.
  if (engine.state.gradientDepth > 0) return tf.variableGrads(f, vars);
  const xs = vars.filter((v) => v.trainable);
  if (xs.length === 0) throw new Error(`backprop: none of the ${vars.length} variables is trainable`);
  const value = engine.scopedRun(
    () => engine.startTape(),
    () => engine.endTape(),
    () => engine.tidy('forward', f),
  );
  const tape = engine.state.activeTape ?? [];
  releaseShapeOnlySaves(tape);
  try {
    if (!(value instanceof tf.Tensor) || value.rank !== 0) throw new Error(`backprop: f must return a scalar tensor, got ${value instanceof tf.Tensor ? `rank ${value.rank}` : typeof value}`);
    const grads = engine.tidy('backward', () => walkBackward(filterTape(tape, xs, value), xs, value));
    const named: NamedTensorMap = {};
    xs.forEach((x, i) => {
      if (grads[i]) named[x.name] = grads[i]!;
    });
    if (Object.keys(named).length === 0) throw new Error('backprop: f does not depend on any of the variables (they must be used inside f)');
    return { value, grads: named };
  } catch (err) {
    tf.dispose(value);
    throw err;
  } finally {
    for (const node of tape) for (const t of node.saved ?? []) t.dispose();
    engine.state.activeTape = null;
  }
}

/**
 * Kernels whose tfjs-core gradient reads only the shapes of what the forward saved for it: Add and
 * Sub (the broadcast shapes), Reshape, Sum, Mean, Slice and PadV2 (the input's shape), Concat (the
 * inputs' shapes). tfjs saves the tensors themselves, which keeps every reshaped or added activation
 * alive until the backward; PyTorch keeps sizes. A disposed tensor keeps its shape, so these saves are
 * disposed as soon as the forward ends. (Should a tfjs version read their values, the gradient fails
 * with "Tensor is disposed": the parity test on the UNet fixture would catch it.)
 */
export const SHAPE_ONLY_GRADIENTS: ReadonlySet<string> = new Set(['Add', 'Sub', 'Reshape', 'Sum', 'Mean', 'Slice', 'PadV2', 'Concat']);

function releaseShapeOnlySaves(tape: TapeNode[]): void {
  for (const node of tape) if (SHAPE_ONLY_GRADIENTS.has(node.kernelName)) for (const t of node.saved ?? []) t.dispose();
}

/** Walks `tape` (filtered to the paths from xs to y) backwards from y; returns each x's gradient or null. */
function walkBackward(tape: TapeNode[], xs: Variable[], y: Tensor): (Tensor | null)[] {
  const wanted = new Set(xs.map((x) => x.id));
  const gradOf = new Map<number, Tensor>([[y.id, tf.onesLike(y)]]);
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i]!;
    if (!node.gradient) throw new Error(`Cannot compute gradient: gradient function not found for ${node.kernelName}.`);
    const dys = node.outputs.map((o) => gradOf.get(o.id) ?? null);
    const names = Object.keys(node.inputs);
    const dxs = tf.tidy(() => {
      const gradients = node.gradient!(dys);
      return names.map((name) => {
        if (!(name in gradients)) throw new Error(`Cannot backprop through input ${name} of ${node.kernelName}. Available gradients found: ${Object.keys(gradients)}.`);
        return gradients[name]!();
      });
    });
    // The node is walked: nothing later needs its outputs' gradients nor what the forward saved for it.
    const handedOn = new Set<Tensor>();
    names.forEach((name, k) => {
      const x = node.inputs[name]!;
      let dx = dxs[k]!;
      check(node, name, dx, x);
      // A gradient function may hand dy itself on, or one tensor to two inputs: give each its own handle.
      if (handedOn.has(dx) || dys.includes(dx)) dx = tf.clone(dx);
      handedOn.add(dx);
      const sum = gradOf.get(x.id);
      if (sum === undefined) {
        gradOf.set(x.id, dx);
      } else {
        gradOf.set(x.id, tf.add(sum, dx));
        sum.dispose();
        dx.dispose();
      }
    });
    for (const o of node.outputs) {
      if (wanted.has(o.id)) continue;
      gradOf.get(o.id)?.dispose();
      gradOf.delete(o.id);
    }
    for (const t of node.saved ?? []) t.dispose();
  }
  return xs.map((x) => gradOf.get(x.id) ?? null);
}

function check(node: TapeNode, name: string, dx: Tensor, x: Tensor): void {
  if (dx.dtype !== 'float32') throw new Error(`Error in gradient for op ${node.kernelName}. The gradient of input ${name} must have 'float32' dtype, but has '${dx.dtype}'`);
  if (dx.shape.length !== x.shape.length || dx.shape.some((d, i) => d !== x.shape[i])) {
    throw new Error(`Error in gradient for op ${node.kernelName}. The gradient of input '${name}' has shape '${dx.shape}', which does not match the shape of the input '${x.shape}'`);
  }
}

/**
 * The nodes on a path from some x to y, each with its inputs pruned to those that depend on an x
 * (tfjs-core's getFilteredNodesXToY, which the package does not export).
 */
function filterTape(tape: TapeNode[], xs: Tensor[], y: Tensor): TapeNode[] {
  const fromX = new Set(xs.map((x) => x.id));
  const nodesFromX = new Set<number>();
  for (const node of tape) {
    if (Object.values(node.inputs).some((input) => fromX.has(input.id))) {
      nodesFromX.add(node.id);
      for (const o of node.outputs) fromX.add(o.id);
    }
  }
  const leadToY = new Set([y.id]);
  const nodesToY = new Set<number>();
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i]!;
    if (node.outputs.some((o) => leadToY.has(o.id))) {
      nodesToY.add(node.id);
      for (const input of Object.values(node.inputs)) leadToY.add(input.id);
    }
  }
  return tape
    .filter((node) => nodesFromX.has(node.id) && nodesToY.has(node.id))
    .map((node) => ({ ...node, inputs: Object.fromEntries(Object.entries(node.inputs).filter(([, input]) => fromX.has(input.id))) }));
}
