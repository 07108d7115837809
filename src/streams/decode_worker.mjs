// Decoding worker for src/streams/decode.ts (plain JS so it loads without a TypeScript loader:
// under tsx, vitest and the bin script alike). Reads one row group of one file with parquet-wasm
// through a file-backed Blob and sends back Arrow IPC bytes (transferred, not copied).
import { parentPort } from 'node:worker_threads';
import { openAsBlob } from 'node:fs';
import * as pw from 'parquet-wasm';

/** key (path + size + mtime) -> Promise<ParquetFile>: the footer is parsed once per file version. */
const files = new Map();
const MAX_FILES = 256;

function fileOf(key, path) {
  let pf = files.get(key);
  if (pf) {
    files.delete(key); // LRU: move to the end
    files.set(key, pf);
    return pf;
  }
  pf = openAsBlob(path).then((blob) => pw.ParquetFile.fromFile(blob));
  files.set(key, pf);
  pf.catch(() => files.delete(key));
  if (files.size > MAX_FILES) {
    const [oldKey, old] = files.entries().next().value;
    files.delete(oldKey);
    // Freed a little later so that a read still running on it can finish.
    setTimeout(() => old.then((f) => f.free()).catch(() => undefined), 60_000).unref();
  }
  return pf;
}

parentPort.on('message', async (m) => {
  const { id, key, path, rowGroup, columns, batchSize } = m;
  try {
    const pf = await fileOf(key, path);
    const table = await pf.read({ rowGroups: [rowGroup], columns, batchSize });
    const ipc = table.intoIPCStream();
    parentPort.postMessage({ id, ipc }, [ipc.buffer]);
  } catch (err) {
    parentPort.postMessage({ id, error: err instanceof Error ? err.message : String(err) });
  }
});
