/**
 * The embedding stream: Parquet row groups → batches of ONE contiguous Float32Array [B, L, D] plus
 * their prompt strings, as a pulled RxJS Observable.
 *
 * Decisions (see also src/streams/README.md):
 * - Pull, bounded: a row group is decoded only when a batch is being produced, and a batch is
 *   produced only while fewer than `prefetch` batches are produced-but-unacknowledged. Without
 *   `demand`, a batch is acknowledged when `subscriber.next` returns (synchronous operators have then
 *   run): a lazy pull, like `concatMap` over batch indices, with up to `prefetch - 1` batches decoded
 *   ahead while downstream runs. With `demand`, each value on `demand` acknowledges one batch
 *   (credits): the source emits at most `prefetch` batches beyond the demand signals received.
 * - Rows whose prompt is "" (the null prompt) are excluded from training batches; a null (missing)
 *   prompt is an error.
 * - Batches fill across row-group and file boundaries but not across epochs. The last batch of an
 *   epoch is emitted short (B' < B, its own exact-size array) unless `dropLast`; never padded.
 * - `limit` truncates the data set to its first `limit` rows in file order (the same subset every
 *   epoch, before sharding and shuffling); computed from the footers, so no row group is read to
 *   apply it. A null-prompt row inside the subset counts towards the limit but is not emitted.
 * - Sharding: the (limited) row groups of all files, in file order, are dealt round-robin: rank r
 *   gets row groups r, r + W, r + 2W, ... Shards are disjoint and cover the data set; they may
 *   differ in size by up to one row group (a multi-process trainer should stop at the shortest).
 * - Shuffle: per epoch, the shard's row-group order is permuted with a PRNG seeded by
 *   (seed, epoch), then rows pass a bounded shuffle buffer of `shuffleBuffer` rows (seeded by
 *   (seed, epoch)); the buffer drains at the end of each epoch, so every epoch holds every row once.
 *   Same seed ⇒ same order.
 * - Resume: `startBatch` = the global batch index to start at (`position.batchIndex` of the next
 *   batch wanted). Whole epochs are skipped by arithmetic after one scan of the prompt column (to
 *   count null-prompt rows); inside the target epoch the order is replayed on row indices only,
 *   and only the row groups whose rows are still needed (current group and shuffle-buffer content)
 *   are decoded. The resumed sequence equals the tail of the uninterrupted one.
 * - Batch striding (data-parallel processes): with `batchStride` N and `batchOffset` r, only the
 *   batches startBatch + r, startBatch + r + N, … of the same stream are emitted (each process of an
 *   MPI world builds the whole stream and keeps its own micro-batches; the others' are assembled
 *   into a reused buffer and dropped). The N processes together emit exactly the batches of the
 *   unstrided stream, with the same contents and positions.
 */
import { readdirSync, statSync } from 'node:fs';
import { resolve, join, dirname, basename, sep } from 'node:path';
import { Observable, type SchedulerLike, type Subscription } from 'rxjs';
import { EmbeddingFormatError } from './errors.ts';
import { EmbeddingFile, SHAPE_KEY, type OpenOptions } from './parquet.ts';
import { mixSeed, Rng } from '../util/rng.ts';
export { inspectEmbeddings, type InspectReport } from './inspect.ts';
export { EmbeddingFormatError } from './errors.ts';

export interface StreamPosition {
  epoch: number;
  /** Global count of batches emitted before this one (across epochs), for resume. */
  batchIndex: number;
}

export interface EmbeddingBatch {
  /** [B, L, D] row-major float32, exactly B·L·D long. */
  embeds: Float32Array;
  shape: [number, number, number];
  prompts: string[];
  position: StreamPosition;
}

export interface RowGroupEvent {
  file: string;
  rowGroup: number;
  rows: number;
  /** 'full': prompts + embeddings decoded; 'prompts': only the prompt column (counting for resume / null lookup). */
  mode: 'full' | 'prompts';
}

export interface EmbeddingStreamOptions extends OpenOptions {
  /** Resolved file paths (see `expandFiles` for globs / comma lists / directories). */
  files: string[];
  batchSize: number;
  shuffle?: boolean;
  seed?: number;
  /** Rows in the shuffle buffer (default: as many as fit 64 MiB, between batchSize and 10,000). */
  shuffleBuffer?: number;
  /** Default 1; Infinity allowed. */
  epochs?: number;
  /** Use only the first `limit` rows of the data set (file order). */
  limit?: number;
  rank?: number;
  worldSize?: number;
  /** Batches produced beyond those acknowledged (default 2, at least 1). */
  prefetch?: number;
  /** Global batch index to resume at. */
  startBatch?: number;
  /** Emit every `batchStride`-th batch from startBatch + batchOffset on (default 1: all). */
  batchStride?: number;
  /** 0 ≤ batchOffset < batchStride (default 0). */
  batchOffset?: number;
  /** Drop each epoch's final short batch (default false: keep it, unpadded). */
  dropLast?: boolean;
  /** Credit-based backpressure: each value acknowledges one batch. */
  demand?: Observable<unknown>;
  /** Schedules deliveries (default: delivered as soon as decoded). */
  scheduler?: SchedulerLike;
  /**
   * Row groups decoded in the background (worker thread) ahead of the one being batched (default 1;
   * 0 = none). They count on top of `prefetch`: at most readAhead row groups beyond what the
   * allowed batches need.
   */
  readAhead?: number;
  /** Called after each row group is read (tests and metrics count decoding with it). */
  onRowGroupRead?: (event: RowGroupEvent) => void;
}

// ---------------------------------------------------------------------------------------------
// Files

/**
 * Expands a comma-separated list (or array) of paths, directories (their *.parquet files) and
 * globs (`*`, `?`, `[...]`, `**`) to sorted absolute paths. Throws when a pattern matches nothing.
 */
export function expandFiles(spec: string | string[]): string[] {
  const parts = (Array.isArray(spec) ? spec : [spec]).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
  const out: string[] = [];
  for (const part of parts) {
    if (/[*?[]/.test(part)) {
      const matches = glob(part);
      if (matches.length === 0) throw new Error(`no file matches '${part}'`);
      out.push(...matches);
      continue;
    }
    const p = resolve(part);
    let st;
    try {
      st = statSync(p);
    } catch {
      throw new Error(`no such file: '${part}'`);
    }
    if (st.isDirectory()) {
      const files = readdirSync(p).filter((f) => f.endsWith('.parquet')).sort().map((f) => join(p, f));
      if (files.length === 0) throw new Error(`no .parquet files in directory '${part}'`);
      out.push(...files);
    } else out.push(p);
  }
  if (out.length === 0) throw new Error('no input files');
  return [...new Set(out)];
}

function glob(pattern: string): string[] {
  const abs = resolve(pattern);
  const segs = abs.split(sep);
  // Longest literal prefix.
  let i = 0;
  while (i < segs.length && !/[*?[]/.test(segs[i]!)) i++;
  const root = segs.slice(0, i).join(sep) || sep;
  const rest = segs.slice(i);
  const results: string[] = [];
  const toRe = (s: string) =>
    new RegExp('^' + s.replace(/[.+^${}()|\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]') + '$');
  const walk = (dir: string, k: number) => {
    if (k === rest.length) {
      try {
        if (statSync(dir).isFile()) results.push(dir);
      } catch {
        /* vanished */
      }
      return;
    }
    const seg = rest[k]!;
    let entries: string[];
    try {
      entries = readdirSync(dir);
    } catch {
      return;
    }
    if (seg === '**') {
      walk(dir, k + 1);
      for (const e of entries) {
        const p = join(dir, e);
        try {
          if (statSync(p).isDirectory()) walk(p, k);
        } catch {
          /* skip */
        }
      }
      return;
    }
    const re = toRe(seg);
    for (const e of entries.sort()) if (re.test(e)) walk(join(dir, e), k + 1);
  };
  walk(root, 0);
  return [...new Set(results)].sort();
}

// ---------------------------------------------------------------------------------------------
// Plan

interface Unit {
  /** Index in the global (limited) row-group list. */
  key: number;
  file: number;
  group: number;
  /** Rows of the group used (fewer than the group's rows only for the last group under `limit`). */
  rows: number;
}

interface Plan {
  files: EmbeddingFile[];
  shape: [number, number];
  shard: Unit[];
}

async function openAll(options: EmbeddingStreamOptions): Promise<EmbeddingFile[]> {
  const files: EmbeddingFile[] = [];
  try {
    for (const path of options.files) files.push(await EmbeddingFile.open(path, options));
  } catch (err) {
    for (const f of files) f.close();
    throw err;
  }
  return files;
}

function commonShape(files: EmbeddingFile[]): [number, number] {
  const ref = files.find((f) => f.info.shapeSource !== 'inferred') ?? files[0]!;
  const shape = ref.info.shape;
  for (const f of files) {
    const s = f.info.shape;
    if (s[0] === shape[0] && s[1] === shape[1]) continue;
    if (f.info.shapeSource === 'inferred' && s[0] * s[1] === shape[0] * shape[1]) continue;
    throw new EmbeddingFormatError(
      { file: f.info.path },
      `embeddings have shape [${s.join(', ')}] but ${ref.info.path} has [${shape.join(', ')}]: all files of a stream must share one shape`,
    );
  }
  return shape;
}

async function makePlan(options: EmbeddingStreamOptions): Promise<Plan> {
  const files = await openAll(options);
  try {
    const shape = commonShape(files);
    const all: Unit[] = [];
    let budget = options.limit ?? Infinity;
    for (let fi = 0; fi < files.length && budget > 0; fi++) {
      const rows = files[fi]!.info.rowGroupRows;
      for (let g = 0; g < rows.length && budget > 0; g++) {
        const n = Math.min(rows[g]!, budget);
        budget -= n;
        if (n > 0) all.push({ key: all.length, file: fi, group: g, rows: n });
      }
    }
    const rank = options.rank ?? 0;
    const world = options.worldSize ?? 1;
    const shard = all.filter((u) => u.key % world === rank);
    if (shard.length === 0 && all.length > 0) {
      throw new Error(`rank ${rank} of ${world} gets no row group: the data set has only ${all.length} non-empty row groups (write smaller row groups or use fewer processes)`);
    }
    return { files, shape, shard };
  } catch (err) {
    for (const f of files) f.close();
    throw err;
  }
}

function checkOptions(o: EmbeddingStreamOptions): void {
  const posInt = (name: string, v: number | undefined, min: number) => {
    if (v !== undefined && !(Number.isInteger(v) && v >= min)) throw new RangeError(`${name} must be an integer >= ${min}, got ${v}`);
  };
  if (!Array.isArray(o.files) || o.files.length === 0) throw new RangeError('files: at least one file is needed');
  posInt('batchSize', o.batchSize, 1);
  posInt('prefetch', o.prefetch, 1);
  posInt('shuffleBuffer', o.shuffleBuffer, 0);
  posInt('readAhead', o.readAhead, 0);
  posInt('limit', o.limit, 0);
  posInt('startBatch', o.startBatch, 0);
  posInt('worldSize', o.worldSize, 1);
  posInt('rank', o.rank, 0);
  posInt('batchStride', o.batchStride, 1);
  posInt('batchOffset', o.batchOffset, 0);
  if ((o.batchOffset ?? 0) >= (o.batchStride ?? 1)) throw new RangeError(`batchOffset ${o.batchOffset} must be < batchStride ${o.batchStride ?? 1}`);
  if ((o.rank ?? 0) >= (o.worldSize ?? 1)) throw new RangeError(`rank ${o.rank} must be < worldSize ${o.worldSize ?? 1}`);
  const e = o.epochs ?? 1;
  if (!(e === Infinity || (Number.isInteger(e) && e >= 0))) throw new RangeError(`epochs must be a non-negative integer or Infinity, got ${e}`);
  if (o.seed !== undefined && !Number.isFinite(o.seed)) throw new RangeError(`seed must be a finite number, got ${o.seed}`);
}

// ---------------------------------------------------------------------------------------------
// The batch generator (pull-driven, one batch per next())

interface GroupState {
  unit: Unit;
  prompts: (string | null)[] | null;
  embeds: Float32Array | null;
  /** Training row indices (prompt !== "", below unit.rows). */
  train: Int32Array;
  pos: number;
}

async function* generateBatches(options: EmbeddingStreamOptions): AsyncGenerator<EmbeddingBatch, void, undefined> {
  const plan = await makePlan(options);
  try {
    yield* batchesOf(plan, options);
  } finally {
    for (const f of plan.files) f.close();
  }
}

async function* batchesOf(plan: Plan, o: EmbeddingStreamOptions): AsyncGenerator<EmbeddingBatch, void, undefined> {
  const [L, D] = plan.shape;
  const per = L * D;
  const B = o.batchSize;
  const epochs = o.epochs ?? 1;
  const seed = o.seed ?? 0;
  const startBatch = o.startBatch ?? 0;
  const stride = o.batchStride ?? 1;
  const offset = o.batchOffset ?? 0;
  const dropLast = o.dropLast ?? false;
  const shuffle = o.shuffle ?? false;
  const S = shuffle ? (o.shuffleBuffer ?? Math.max(B, Math.min(10_000, Math.floor((64 * 2 ** 20) / (per * 4))))) : 0;
  const useBuffer = S > 1;

  // Null-prompt rows per unit, known from a prompt-column scan (only needed to resume).
  const nullRows = new Map<number, Int32Array>();

  const fileOf = (u: Unit) => plan.files[u.file]!;
  const trainOf = (u: Unit, prompts: (string | null)[]): Int32Array => {
    const f = fileOf(u);
    const idx: number[] = [];
    for (let r = 0; r < u.rows; r++) {
      const p = prompts[r];
      if (p === null || p === undefined) {
        throw new EmbeddingFormatError({ file: f.info.path, rowGroup: u.group, row: f.rowStartOf(u.group) + r }, `prompt is null (write "" for the null prompt)`);
      }
      if (p !== '') idx.push(r);
    }
    return Int32Array.from(idx);
  };
  const loadFull = async (u: Unit) => {
    const f = fileOf(u);
    const g = await f.readRowGroup(u.group);
    o.onRowGroupRead?.({ file: f.info.path, rowGroup: u.group, rows: g.rows, mode: 'full' });
    return g;
  };
  const scanPrompts = async (u: Unit): Promise<Int32Array> => {
    const f = fileOf(u);
    const prompts = await f.readPrompts(u.group);
    o.onRowGroupRead?.({ file: f.info.path, rowGroup: u.group, rows: prompts.length, mode: 'prompts' });
    const train = trainOf(u, prompts);
    const nulls: number[] = [];
    for (let r = 0, t = 0; r < u.rows; r++) {
      if (train[t] === r) t++;
      else nulls.push(r);
    }
    nullRows.set(u.key, Int32Array.from(nulls));
    return train;
  };
  const trainFromNulls = (u: Unit): Int32Array => {
    const nulls = nullRows.get(u.key)!;
    const out = new Int32Array(u.rows - nulls.length);
    for (let r = 0, k = 0, t = 0; r < u.rows; r++) {
      if (nulls[k] === r) k++;
      else out[t++] = r;
    }
    return out;
  };

  let batchIndex = 0;
  let epoch = 0;
  if (startBatch > 0) {
    let T = 0;
    for (const u of plan.shard) T += (await scanPrompts(u)).length;
    const perEpoch = dropLast ? Math.floor(T / B) : Math.ceil(T / B);
    if (perEpoch === 0) throw new Error(`cannot resume at batch ${startBatch}: the data set yields no batch (${T} training rows, batch size ${B})`);
    epoch = Math.floor(startBatch / perEpoch);
    batchIndex = epoch * perEpoch;
  }

  for (; epoch < epochs; epoch++) {
    const order = shuffle ? new Rng(mixSeed(seed, epoch, 1)).shuffle([...plan.shard]) : plan.shard;
    const rng = new Rng(mixSeed(seed, epoch, 2));
    let skipping = batchIndex < startBatch;
    const firstIndex = batchIndex;

    // Batch under construction.
    let out: Float32Array | null = skipping ? null : new Float32Array(B * per);
    let prompts: string[] = [];
    let fill = 0;

    // Shuffle buffer: row data (slab) + prompt + the row's origin (for replay while skipping).
    let slab: Float32Array | null = null;
    const bufPrompt: string[] = [];
    const bufUnit = new Int32Array(useBuffer ? S : 0);
    const bufRow = new Int32Array(useBuffer ? S : 0);
    const bufHas = new Uint8Array(useBuffer ? S : 0);
    let bufSize = 0;
    const unitsByKey = new Map(plan.shard.map((u) => [u.key, u]));

    let cur: GroupState | null = null;

    /** Ends the current batch: returns it (or null while skipping). */
    const finish = (): EmbeddingBatch | null => {
      const n = fill;
      fill = 0;
      const position = { epoch, batchIndex };
      batchIndex++;
      if (skipping) return null;
      if ((position.batchIndex - startBatch) % stride !== offset) {
        prompts = []; // another process's batch: `out` is reused for the next one
        return null;
      }
      const embeds = n === B ? out! : out!.slice(0, n * per);
      const batch: EmbeddingBatch = { embeds, shape: [n, L, D], prompts, position };
      out = new Float32Array(B * per);
      prompts = [];
      return batch;
    };

    /** Called when the skipped prefix ends inside this epoch: decode what the replay only referenced. */
    const materialize = async () => {
      skipping = false;
      out = new Float32Array(B * per);
      prompts = [];
      const decoded = new Map<number, { prompts: (string | null)[]; embeds: Float32Array }>();
      if (cur && !cur.embeds) {
        const g = await loadFull(cur.unit);
        cur.embeds = g.embeds;
        cur.prompts = g.prompts;
        decoded.set(cur.unit.key, g);
      }
      if (useBuffer && bufSize > 0) {
        slab ??= new Float32Array(S * per);
        const need = new Set<number>();
        for (let j = 0; j < bufSize; j++) if (!bufHas[j]) need.add(bufUnit[j]!);
        for (const key of [...need].sort((a, b) => a - b)) {
          const g = decoded.get(key) ?? (await loadFull(unitsByKey.get(key)!));
          for (let j = 0; j < bufSize; j++) {
            if (bufHas[j] || bufUnit[j] !== key) continue;
            const r = bufRow[j]!;
            slab.set(g.embeds.subarray(r * per, (r + 1) * per), j * per);
            bufPrompt[j] = g.prompts[r]!;
            bufHas[j] = 1;
          }
        }
      }
    };

    /** Moves buffer slot j into the batch. */
    const takeSlot = (j: number) => {
      if (!skipping) {
        out!.set(slab!.subarray(j * per, (j + 1) * per), fill * per);
        prompts.push(bufPrompt[j]!);
      } else bufHas[j] = 1; // emptied: no need to decode its row on materialize
      fill++;
    };
    /** Puts row r of the current group into buffer slot j. */
    const putSlot = (j: number, g: GroupState, r: number) => {
      bufUnit[j] = g.unit.key;
      bufRow[j] = r;
      if (g.embeds) {
        slab ??= new Float32Array(S * per);
        slab.set(g.embeds.subarray(r * per, (r + 1) * per), j * per);
        bufPrompt[j] = g.prompts![r]!;
        bufHas[j] = 1;
      } else bufHas[j] = 0;
    };

    /**
     * Planning: moves this epoch's training rows into the batch under construction, in the order the
     * epoch takes them (row groups in `order`; through the shuffle buffer when there is one), and
     * pauses (yields) whenever a row has entered the batch. Emitting happens in the loop below.
     */
    async function* moveRows(): AsyncGenerator<void, void, undefined> {
      const readAhead = o.readAhead ?? 1;
      for (let ui = 0; ui < order.length; ui++) {
        const unit = order[ui]!;
        if (!skipping) {
          for (let k = 1; k <= readAhead && ui + k < order.length; k++) {
            const nu = order[ui + k]!;
            fileOf(nu).readAhead(nu.group);
          }
        }
        if (skipping && nullRows.has(unit.key)) {
          cur = { unit, prompts: null, embeds: null, train: trainFromNulls(unit), pos: 0 };
        } else {
          const g = await loadFull(unit);
          cur = { unit, prompts: g.prompts, embeds: g.embeds, train: trainOf(unit, g.prompts), pos: 0 };
        }
        const train = cur.train;
        while (cur.pos < train.length) {
          if (!useBuffer) {
            // Copy the longest run of consecutive rows that fits the batch.
            const r0 = train[cur.pos]!;
            let m = 1;
            const room = B - fill;
            while (m < room && cur.pos + m < train.length && train[cur.pos + m] === r0 + m) m++;
            if (!skipping) {
              out!.set(cur.embeds!.subarray(r0 * per, (r0 + m) * per), fill * per);
              for (let k = 0; k < m; k++) prompts.push(cur.prompts![r0 + k]!);
            }
            fill += m;
            cur.pos += m;
            yield;
          } else {
            const r = train[cur.pos]!;
            if (bufSize < S) {
              putSlot(bufSize++, cur, r);
            } else {
              // The slot's old row enters the batch; the incoming row takes its place once the batch
              // (if now full) has been emitted.
              const j = rng.int(S);
              takeSlot(j);
              yield;
              putSlot(j, cur, r);
            }
            cur.pos++;
          }
        }
        cur = null;
      }
      // Drain the shuffle buffer in random order.
      if (useBuffer && bufSize > 0) {
        const rest = rng.shuffle(Array.from({ length: bufSize }, (_, j) => j));
        for (const j of rest) {
          takeSlot(j);
          yield;
        }
        bufSize = 0;
      }
    }

    // Emitting: a full batch leaves as soon as its last row is in.
    for await (const _ of moveRows()) {
      if (fill < B) continue;
      const b = finish();
      if (b) yield b;
      if (skipping && batchIndex >= startBatch) await materialize();
    }
    if (fill > 0) {
      if (dropLast) fill = 0;
      else {
        const b = finish();
        if (b) yield b;
      }
    }
    if (batchIndex === firstIndex && epochs === Infinity) {
      throw new Error(`the data set yields no batch (no training rows${dropLast ? ` or fewer than batchSize ${B} with dropLast` : ''}): an endless run would spin`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The Observable

/**
 * Batches of embeddings from Parquet files (see the module comment for pull / prefetch / shuffle /
 * shard / resume semantics). Nothing is opened until subscription; unsubscribing stops decoding and
 * closes the files. Errors (bad rows, unreadable files) end the stream with an EmbeddingFormatError
 * naming file, row group and row; batches before the error were complete, none after it is emitted.
 */
export function embeddingBatches(options: EmbeddingStreamOptions): Observable<EmbeddingBatch> {
  return new Observable<EmbeddingBatch>((subscriber) => {
    try {
      checkOptions(options);
    } catch (err) {
      subscriber.error(err);
      return;
    }
    const prefetch = options.prefetch ?? 2;
    const scheduler = options.scheduler;
    const gen = generateBatches(options);
    const inflight: Promise<IteratorResult<EmbeddingBatch, void>>[] = [];
    let started = 0;
    let acked = 0;
    let finished = false;
    let closed = false;
    let draining = false;

    const run = (fn: () => void) => {
      if (scheduler) subscriber.add(scheduler.schedule(() => !closed && fn()));
      else fn();
    };
    const fail = (err: unknown) => {
      if (closed) return;
      finished = true;
      run(() => {
        closed = true;
        subscriber.error(err);
      });
    };
    const fill = () => {
      while (!closed && !finished && started < acked + prefetch) {
        const p = gen.next();
        p.catch(() => undefined); // handled in drain
        inflight.push(p);
        started++;
      }
      if (!draining && inflight.length > 0) void drain();
    };
    const ack = () => {
      acked++;
      fill();
    };
    const drain = async () => {
      draining = true;
      try {
        while (!closed && inflight.length > 0) {
          let r: IteratorResult<EmbeddingBatch, void>;
          try {
            r = await inflight[0]!;
          } catch (err) {
            inflight.length = 0;
            fail(err);
            return;
          }
          inflight.shift();
          if (closed) return;
          if (r.done) {
            finished = true;
            inflight.length = 0;
            run(() => {
              closed = true;
              subscriber.complete();
            });
            return;
          }
          const batch = r.value;
          run(() => {
            subscriber.next(batch);
            if (!options.demand) ack();
          });
        }
      } finally {
        draining = false;
      }
      if (!closed && !finished && inflight.length === 0 && started < acked + prefetch) fill();
    };

    let demandSub: Subscription | undefined;
    if (options.demand) {
      demandSub = options.demand.subscribe({ next: () => ack(), error: (err) => fail(err) });
    }
    fill();

    return () => {
      closed = true;
      demandSub?.unsubscribe();
      // Closes the files once any in-flight decode settles.
      void gen.return(undefined).catch(() => undefined);
    };
  });
}

// ---------------------------------------------------------------------------------------------
// The null prompt

/**
 * The embedding of the row whose prompt is "" (the first one found, in file order). Only the prompt
 * column is read until it is found, then that row group. Throws when no file has one.
 */
export async function readNullEmbedding(
  files: string[] | string,
  options: OpenOptions = {},
): Promise<{ embeds: Float32Array; shape: [number, number]; file: string; row: number }> {
  const list = typeof files === 'string' ? expandFiles(files) : files;
  for (const path of list) {
    const f = await EmbeddingFile.open(path, options);
    try {
      for (let g = 0; g < f.numRowGroups; g++) {
        if (f.info.rowGroupRows[g] === 0) continue;
        const prompts = await f.readPrompts(g);
        const r = prompts.indexOf('');
        if (r < 0) continue;
        const group = await f.readRowGroup(g);
        const [L, D] = f.info.shape;
        return { embeds: group.embeds.slice(r * L * D, (r + 1) * L * D), shape: [L, D], file: path, row: f.rowStartOf(g) + r };
      }
    } finally {
      f.close();
    }
  }
  throw new Error(
    `no null-prompt row (prompt == "") in ${list.length === 1 ? list[0] : `${list.length} files`}: ` +
      `add the embedding of the empty prompt as a row with prompt "" (import-npy --null-npy), or add a file holding that row to the list (--embeddings train.parquet,null.parquet)`,
  );
}

/**
 * The model's width D: a UNet config's cross_attention_dim (one number, or one per block, which
 * must then agree: the text embeddings feed every block).
 */
export function modelWidth(crossAttentionDim: number | number[], configPath: string): number {
  const dims = Array.isArray(crossAttentionDim) ? [...new Set(crossAttentionDim)] : [crossAttentionDim];
  if (dims.length !== 1 || !Number.isInteger(dims[0]) || dims[0]! <= 0) throw new Error(`${configPath}: cross_attention_dim ${JSON.stringify(crossAttentionDim)} is not one positive width`);
  return dims[0]!;
}

/**
 * Checks, before any work, that every file's rows are [L, width] (`width`: the UNet's
 * cross_attention_dim; files without shape metadata take D from it). Throws naming the file, both
 * numbers and the model. Returns the common [L, D].
 */
export async function checkEmbeddingWidth(files: string[], width: number, model: string, options: OpenOptions = {}): Promise<[number, number]> {
  let shape: [number, number] | undefined;
  for (const path of files) {
    const f = await EmbeddingFile.open(path, { ...options, width });
    try {
      const [L, D] = f.info.shape;
      if (D !== width) {
        throw new EmbeddingFormatError(
          { file: path },
          `embeddings are [${L}, ${D}] per row (D = ${D}, ${f.info.shapeSource === 'metadata' ? `from its ${SHAPE_KEY} metadata` : 'from the data'}), but the UNet ${model} has cross_attention_dim ${width}: ` +
            'the prompts must be embedded with the text encoder the UNet was trained with',
        );
      }
      if (shape && shape[0] !== L) throw new EmbeddingFormatError({ file: path }, `embeddings are [${L}, ${D}] per row but ${files[0]} has [${shape.join(', ')}]: all files must share one shape`);
      shape = [L, D];
    } finally {
      f.close();
    }
  }
  return shape!;
}

/** Directory and base name helper for messages. */
export function shortName(path: string): string {
  return join(basename(dirname(path)), basename(path));
}
