/**
 * Row-group decoding off the main thread. parquet-wasm's decode (reading the column chunks through
 * the Blob, decompression, level decoding, Arrow assembly) is the most expensive step of reading;
 * a small pool of worker threads (default: 1, or SWIFTBRUSH_DECODE_WORKERS; more only helps with spare cores) decodes row groups in
 * parallel with each other and with the main thread's validation and batch copies. A worker
 * returns Arrow IPC bytes (transferred), parsed here with `tableFromIPC` (zero-copy views).
 *
 * Workers are created lazily, shared by all open files, unref'd while idle (they never keep the
 * process alive), and replaced after a crash or a wasm panic. If none can start, callers decode
 * in-process.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';

interface Pending {
  resolve: (ipc: Uint8Array) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker | null;
  pending: Map<number, Pending>;
}

const POOL = Math.max(1, Number(process.env.SWIFTBRUSH_DECODE_WORKERS ?? Math.min(1, availableParallelism())) | 0);
const slots: Slot[] = Array.from({ length: POOL }, () => ({ worker: null, pending: new Map() }));
let broken = false;
let nextId = 1;

function failAll(slot: Slot, err: Error): void {
  for (const p of slot.pending.values()) p.reject(err);
  slot.pending.clear();
}

function start(slot: Slot): Worker | null {
  if (broken) return null;
  if (slot.worker) return slot.worker;
  try {
    const w = new Worker(new URL('./decode_worker.mjs', import.meta.url), { execArgv: [] });
    w.unref();
    w.on('message', (m: { id: number; ipc?: Uint8Array; error?: string }) => {
      const p = slot.pending.get(m.id);
      if (!p) return;
      slot.pending.delete(m.id);
      if (slot.pending.size === 0) w.unref();
      if (m.error !== undefined) {
        // A Rust panic leaves the wasm instance unusable: start a fresh worker next time.
        if (/unreachable|panicked/i.test(m.error) && slot.worker === w) {
          slot.worker = null;
          failAll(slot, new Error(`decode worker crashed: ${m.error}`));
          void w.terminate();
        }
        p.reject(new Error(m.error));
      } else p.resolve(m.ipc!);
    });
    w.on('error', (err) => {
      if (slot.worker === w) slot.worker = null;
      failAll(slot, err instanceof Error ? err : new Error(String(err)));
    });
    w.on('exit', (code) => {
      if (slot.worker === w) slot.worker = null;
      if (slot.pending.size > 0) failAll(slot, new Error(`decode worker exited with code ${code}`));
    });
    slot.worker = w;
    return w;
  } catch {
    broken = true;
    return null;
  }
}

/** True when row groups can be decoded in a worker. */
export function workerAvailable(): boolean {
  return start(slots[0]!) !== null;
}

/** Decodes one row group in the least busy worker; resolves to Arrow IPC stream bytes. */
export function decodeInWorker(key: string, path: string, rowGroup: number, columns: string[], batchSize: number): Promise<Uint8Array> {
  let slot = slots[0]!;
  for (const s of slots) if (s.pending.size < slot.pending.size) slot = s;
  const w = start(slot);
  if (!w) return Promise.reject(new Error('decode worker unavailable'));
  const id = nextId++;
  return new Promise<Uint8Array>((resolve, reject) => {
    slot.pending.set(id, { resolve, reject });
    w.ref();
    w.postMessage({ type: 'read', id, key, path, rowGroup, columns, batchSize });
  });
}
