/**
 * Backend selection: `auto` tries, in order, tfjs-node-gpu (if it loads and sees a GPU), tfjs-node
 * (if installed), wasm, then the pure-JS cpu backend. Every skipped candidate is reported with the
 * reason, so a user can see why their GPU or native build was not used.
 */
import { tf } from './tf.ts';
import { registerConvGradients } from './models/conv_grad.ts';
import { registerMatMulGradient } from './models/matmul_grad.ts';
import { registerNativeKernelShortcuts } from './native_kernels.ts';

export const BACKEND_NAMES = ['auto', 'tensorflow', 'wasm', 'cpu'] as const;
export type BackendName = (typeof BACKEND_NAMES)[number];

export interface BackendChoice {
  /** The tfjs backend name now active (`tensorflow`, `wasm` or `cpu`). */
  backend: string;
  /** Which package provided it, e.g. `@tensorflow/tfjs-node-gpu`. */
  provider: string;
  /** Candidates tried before the chosen one, with why each was skipped. */
  skipped: { candidate: string; reason: string }[];
}

type Attempt = { candidate: string; load: () => Promise<string | null> };

/** Returns null when the backend is usable, otherwise the reason it is not. */
async function tryNative(pkg: string, wantGpu: boolean): Promise<string | null> {
  try {
    await import(pkg);
  } catch (err) {
    return `${pkg} is not installed or failed to load (${firstLine(err)})`;
  }
  if (!(await tf.setBackend('tensorflow'))) return `${pkg} loaded but the 'tensorflow' backend did not initialise`;
  if (wantGpu) {
    // tfjs-node-gpu falls back to CPU silently when CUDA is missing; its binding knows which.
    const binding = (tf.backend() as unknown as { binding?: { isUsingGpuDevice?: () => boolean } }).binding;
    if (!binding?.isUsingGpuDevice?.()) return `${pkg} loaded but sees no GPU`;
  }
  registerNativeKernelShortcuts();
  return null;
}

async function tryWasm(): Promise<string | null> {
  try {
    await import('@tensorflow/tfjs-backend-wasm');
  } catch (err) {
    return `@tensorflow/tfjs-backend-wasm failed to load (${firstLine(err)})`;
  }
  return (await tf.setBackend('wasm')) ? null : 'the wasm backend did not initialise';
}

async function tryCpu(): Promise<string | null> {
  return (await tf.setBackend('cpu')) ? null : 'the cpu backend did not initialise';
}

const ATTEMPTS: Record<Exclude<BackendName, 'auto'>, Attempt[]> = {
  tensorflow: [
    { candidate: '@tensorflow/tfjs-node-gpu', load: () => tryNative('@tensorflow/tfjs-node-gpu', true) },
    { candidate: '@tensorflow/tfjs-node', load: () => tryNative('@tensorflow/tfjs-node', false) },
  ],
  wasm: [{ candidate: '@tensorflow/tfjs-backend-wasm', load: tryWasm }],
  cpu: [{ candidate: '@tensorflow/tfjs-backend-cpu', load: tryCpu }],
};

function firstLine(err: unknown): string {
  return String(err instanceof Error ? err.message : err).split('\n')[0]!;
}

/** Resolves the backend name from an explicit option, then `SWIFTBRUSH_BACKEND`, then `auto`. */
export function requestedBackend(option?: string): BackendName {
  const name = option ?? process.env.SWIFTBRUSH_BACKEND ?? 'auto';
  if (!(BACKEND_NAMES as readonly string[]).includes(name)) {
    throw new Error(`unknown backend '${name}' (from ${option ? '--backend' : 'SWIFTBRUSH_BACKEND'}); choose one of ${BACKEND_NAMES.join(', ')}`);
  }
  return name as BackendName;
}

/**
 * Backends on which the stock Conv2D / BatchMatMul gradients run, rather than the project's
 * rewrites. The rewrites (conv_grad.ts: gradients as forward convolutions; matmul_grad.ts: explicit
 * transposes instead of transpose flags) exist because wasm lacks, or runs slowly, the kernels the
 * stock gradients call; libtensorflow has fast native Conv2DBackpropFilter/Input and transposed
 * BatchMatMul, so there the rewrites only add transposes and copies (measured on the fixture UNet,
 * batch 8: docs/speed.md, "The native backend").
 */
export const STOCK_GRADIENT_BACKENDS: ReadonlySet<string> = new Set(['tensorflow']);

/**
 * Whether the stock gradient can run on the native backend for these attributes: tfjs-node's
 * Conv2DBackpropFilter/Input accept only 'valid' / 'same' padding (explicit padding throws), so
 * explicitly padded convs keep the project's rewrite, which pads and then convolves.
 */
const STOCK_SUPPORTS: Record<string, (attrs: Record<string, unknown>) => boolean> = {
  Conv2D: (attrs) => attrs.pad === 'same' || attrs.pad === 'valid' || attrs.pad === 0,
  BatchMatMul: () => true,
};

/**
 * 'auto': per backend as above; 'project' / 'stock': force one everywhere (benchmarks, tests;
 * 'stock' fails on wasm, which has no Conv2DBackpropFilter).
 */
export type GradientMode = 'auto' | 'project' | 'stock';
let gradientMode: GradientMode = 'auto';
export function setGradientMode(mode: GradientMode): void {
  gradientMode = mode;
}

let gradientsRegistered = false;

/**
 * tfjs' gradient registry is global (one gradFunc per kernel, whatever the backend), and a process
 * may switch backends (the tests compare wasm with cpu). So each overridden kernel gets a gradFunc
 * that picks, when the backward pass runs, the stock gradient on STOCK_GRADIENT_BACKENDS (where it
 * supports the attributes) and the project's rewrite elsewhere. Both save the same inputs, and both
 * are exact (test/models/conv_grad.test.ts, test/backend/native.test.ts).
 */
function registerProjectGradients(): void {
  if (gradientsRegistered) return;
  gradientsRegistered = true;
  const kernels: [string, () => void][] = [['Conv2D', registerConvGradients], ['BatchMatMul', registerMatMulGradient]];
  for (const [kernelName, registerOverride] of kernels) {
    const stock = tf.getGradient(kernelName);
    registerOverride();
    const project = tf.getGradient(kernelName)!;
    const same = (a?: unknown[], b?: unknown[]) => (a ?? []).join() === (b ?? []).join();
    if (!stock || !same(stock.inputsToSave, project.inputsToSave) || !same(stock.outputsToSave, project.outputsToSave) || stock.saveAllInputs !== project.saveAllInputs) continue;
    const supports = STOCK_SUPPORTS[kernelName]!;
    const useStock = (attrs: Record<string, unknown>) =>
      gradientMode === 'stock' || (gradientMode === 'auto' && STOCK_GRADIENT_BACKENDS.has(tf.getBackend()) && supports(attrs));
    const quiet = console.warn;
    console.warn = () => {}; // "Overriding the gradient for ...": intended.
    try {
      tf.registerGradient({ ...project, gradFunc: (dy, saved, attrs) => (useStock(attrs as Record<string, unknown>) ? stock : project).gradFunc(dy, saved, attrs) });
    } finally {
      console.warn = quiet;
    }
  }
}

let current: BackendChoice | undefined;

/**
 * Activates a backend and registers the project's convolution gradients. Idempotent for the same
 * request; `tf.ready()` has resolved when it returns, so ops may run.
 */
export async function initBackend(option?: string): Promise<BackendChoice> {
  const name = requestedBackend(option);
  if (current && (name === 'auto' || current.backend === name)) return current;
  const attempts = name === 'auto' ? [...ATTEMPTS.tensorflow, ...ATTEMPTS.wasm, ...ATTEMPTS.cpu] : ATTEMPTS[name];
  const skipped: BackendChoice['skipped'] = [];
  for (const attempt of attempts) {
    const reason = await attempt.load();
    if (reason === null) {
      await tf.ready();
      // PROD silences tfjs' console banners ("looks like you are running TensorFlow.js in Node.js");
      // our own log says which backend runs and why.
      tf.env().set('PROD', true);
      registerProjectGradients();
      current = { backend: tf.getBackend(), provider: attempt.candidate, skipped };
      return current;
    }
    skipped.push({ candidate: attempt.candidate, reason });
  }
  throw new Error(`no usable backend for '${name}': ${skipped.map((s) => `${s.candidate}: ${s.reason}`).join('; ')}`);
}

/** What the wasm backend (and V8) say when an allocation fails. */
const OUT_OF_MEMORY = /memory access out of bounds|Aborted\(|Cannot enlarge memory|Out of memory|WebAssembly\.Memory|Array buffer allocation failed|Invalid typed array length/i;

/**
 * A backend crash as a user-facing error: a wasm abort ("memory access out of bounds", "Aborted()")
 * or a failed allocation is, in this project, almost always the 4 GiB wasm heap (or the machine's
 * memory) running out; the message says so, what the process held, and where to go instead.
 * Other errors are returned unchanged.
 */
export function explainBackendError(err: unknown): unknown {
  const message = err instanceof Error ? err.message : String(err);
  if (!OUT_OF_MEMORY.test(message)) return err;
  const backend = current?.backend ?? 'unknown';
  const rssGib = (process.resourceUsage().maxRSS / 1024 ** 2).toFixed(1);
  const where =
    backend === 'wasm'
      ? "the wasm backend most likely ran out of its 4 GiB heap (model weights, optimiser state and this batch's activations must all fit in it)"
      : `the ${backend} backend failed to allocate memory (most likely the machine's memory ran out)`;
  return new Error(
    `${where}; peak RSS was ${rssGib} GiB. Run \`swiftbrush distill --dry-run\` to see what the run holds; ` +
      'lower --batch-size, or use the native backend (`npm run native:build`, then --backend tensorflow) or a GPU host ' +
      `(@tensorflow/tfjs-node-gpu). Backend message: ${message.split('\n')[0]}`,
  );
}
