/**
 * A diffusers model folder's weights, as `from_pretrained` finds them: one safetensors file
 * (`diffusion_pytorch_model.safetensors`), or a sharded set (`….safetensors.index.json` naming each
 * key's shard, as `save_pretrained` writes models over its shard size), each optionally a `variant`
 * (`--variant fp16` reads `diffusion_pytorch_model.fp16.safetensors` / `diffusion_pytorch_model.safetensors.fp16.index.json`).
 * Opening reads the headers only; tensors are read one at a time on demand.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ReadBuffer, SafetensorsFileReader, type StoredTensor, type TensorEntry } from './safetensors.ts';

/**
 * diffusers' `_add_variant`: the variant goes before the last extension, or before `.index.json`
 * (`diffusion_pytorch_model.fp16.safetensors`, `diffusion_pytorch_model.safetensors.fp16.index.json`).
 */
export function variantName(name: string, variant?: string): string {
  if (!variant) return name;
  const parts = name.split('.');
  const at = name.endsWith('.index.json') ? parts.length - 2 : parts.length - 1;
  return [...parts.slice(0, at), variant, ...parts.slice(at)].join('.');
}

/** Tensors addressed by name, read on demand (a checkpoint folder, or tensors already in memory). */
export interface TensorSource {
  /** Every tensor's name, dtype and shape (no data). */
  readonly entries: ReadonlyMap<string, Pick<TensorEntry, 'name' | 'dtype' | 'shape'> & { file?: string }>;
  /** What to name in errors: the file(s) or folder. */
  readonly description: string;
  /** One tensor; with `into`, file-backed sources read into that reused buffer (the result is valid until its next read). */
  read(name: string, into?: ReadBuffer): StoredTensor;
  close(): void;
}

/** A read buffer sized for the largest of `source`'s tensors, so that reading them all never reallocates it. */
export function readBufferFor(source: TensorSource): ReadBuffer {
  const buffer = new ReadBuffer();
  for (const e of source.entries.values()) buffer.reserve(e.dtype, e.shape.reduce((a, b) => a * b, 1));
  return buffer;
}

/** Tensors held in memory as a source (state dicts, tests). */
export function mapSource(tensors: Map<string, StoredTensor>, description = 'state dict'): TensorSource {
  return {
    entries: new Map([...tensors].map(([name, t]) => [name, { name, dtype: t.dtype, shape: t.shape }])),
    description,
    read: (name) => {
      const t = tensors.get(name);
      if (!t) throw new Error(`${description}: no tensor '${name}'`);
      return t;
    },
    close: () => {},
  };
}

/** The weights of one diffusers model folder: a single file or the shards of an index, open for reading. */
export class WeightFiles implements TensorSource {
  readonly entries = new Map<string, TensorEntry>();

  private constructor(readonly description: string, private readonly readers: SafetensorsFileReader[]) {
    for (const reader of readers) {
      for (const [name, entry] of reader.entries) {
        const other = this.entries.get(name);
        if (other) throw new Error(`tensor '${name}' is in two shards: ${other.file} and ${entry.file}`);
        this.entries.set(name, entry);
      }
    }
  }

  /** The files this folder's weights are in (single file, or every shard of the index). */
  get files(): string[] {
    return this.readers.map((r) => r.path);
  }

  /**
   * Opens `dir/<weightsName>` (with `variant`), else its sharded index; errors name the folder, the
   * files looked for, and the variants that are there instead.
   */
  static open(dir: string, weightsName: string, variant?: string): WeightFiles {
    // As diffusers: a sharded index wins over a single file.
    const index = join(dir, variantName(`${weightsName}.index.json`, variant));
    if (existsSync(index)) return WeightFiles.openIndex(dir, index);
    const single = join(dir, variantName(weightsName, variant));
    if (existsSync(single)) return new WeightFiles(single, [SafetensorsFileReader.open(single)]);
    throw new Error(`${dir}: no weights: neither ${variantName(weightsName, variant)} nor ${variantName(`${weightsName}.index.json`, variant)} is there${availableHint(dir, weightsName, variant)}`);
  }

  private static openIndex(dir: string, index: string): WeightFiles {
    let weightMap: Record<string, string>;
    try {
      weightMap = (JSON.parse(readFileSync(index, 'utf8')) as { weight_map?: Record<string, string> }).weight_map ?? {};
    } catch (err) {
      throw new Error(`${index}: cannot read the shard index (${(err as Error).message})`);
    }
    if (!Object.keys(weightMap).length) throw new Error(`${index}: the shard index has no 'weight_map' entries`);
    const shards = [...new Set(Object.values(weightMap))].sort();
    const readers: SafetensorsFileReader[] = [];
    try {
      for (const shard of shards) {
        const path = join(dir, shard);
        if (!existsSync(path)) throw new Error(`${index}: names shard ${shard}, which is not in ${dir}`);
        readers.push(SafetensorsFileReader.open(path));
      }
      const files = new WeightFiles(index, readers);
      for (const [key, shard] of Object.entries(weightMap)) {
        const entry = files.entries.get(key);
        if (!entry) throw new Error(`${index}: key '${key}' should be in ${shard}, which has no such tensor`);
        if (entry.file !== join(dir, shard)) throw new Error(`${index}: key '${key}' should be in ${shard}, but is in ${entry.file}`);
      }
      const unlisted = [...files.entries.keys()].filter((k) => !(k in weightMap));
      if (unlisted.length) throw new Error(`${index}: the shards hold keys the index does not list: ${unlisted.slice(0, 5).join(', ')}${unlisted.length > 5 ? ` (+${unlisted.length - 5} more)` : ''}`);
      return files;
    } catch (err) {
      for (const r of readers) r.close();
      throw err;
    }
  }

  read(name: string, into?: ReadBuffer): StoredTensor {
    const entry = this.entries.get(name);
    if (!entry) throw new Error(`${this.description}: no tensor '${name}'`);
    return this.readers.find((r) => r.path === entry.file)!.read(name, into);
  }



  close(): void {
    for (const r of this.readers) r.close();
  }
}

/** ", but <files> are: pass --variant X" when other variants of the weights are in the folder. */
function availableHint(dir: string, weightsName: string, variant?: string): string {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return ' (the folder cannot be read)';
  }
  const stem = weightsName.replace(/\.safetensors$/, '');
  const found = names.filter((n) => n.startsWith(stem) && (n.endsWith('.safetensors') || n.endsWith('.json'))).sort();
  if (!found.length) return '';
  const variants = [...new Set(found.map((n) => /^[^.-]+(?:-\d+-of-\d+)?\.([^.]+)\.safetensors$/.exec(n)?.[1] ?? /\.safetensors\.([^.]+)\.index\.json$/.exec(n)?.[1]).filter((v): v is string => !!v))];
  const options = variants.filter((v) => v !== variant).map((v) => `--variant ${v}`);
  if (variant && (found.includes(weightsName) || found.includes(`${weightsName}.index.json`))) options.push('no --variant');
  const advice = options.length ? `: use ${options.join(' or ')}` : '';
  return ` (found ${found.join(', ')}${advice})`;
}

/** Missing, unexpected and mis-shaped keys of `source` against the model's parameters, as one error naming the source. */
export function checkAgainst(specs: readonly { name: string; torchShape: number[] }[], source: TensorSource, what = 'the UNet config'): void {
  const expected = new Map(specs.map((p) => [p.name, p]));
  const missing = specs.filter((p) => !source.entries.has(p.name)).map((p) => p.name);
  const unexpected = [...source.entries.keys()].filter((k) => !expected.has(k));
  const misShaped: string[] = [];
  for (const p of specs) {
    const t = source.entries.get(p.name);
    if (t && t.shape.join(',') !== p.torchShape.join(',')) misShaped.push(`${p.name}: file [${t.shape}] vs model [${p.torchShape}]`);
  }
  const problems = [
    missing.length ? `missing keys (${missing.length}): ${missing.join(', ')}` : '',
    unexpected.length ? `unexpected keys (${unexpected.length}): ${unexpected.join(', ')}` : '',
    misShaped.length ? `mis-shaped keys (${misShaped.length}): ${misShaped.join('; ')}` : '',
  ].filter(Boolean);
  if (problems.length) throw new Error(`${source.description} does not match ${what}:\n  ${problems.join('\n  ')}`);
}

/**
 * One tensor as float32 (F16/BF16 are widened on read; F64 narrowed, as torch's .float() does); other
 * dtypes are refused, naming the file and key. With `into`, the result may be a view into that reused
 * buffer, valid until its next read.
 */
export function readFloat32(source: TensorSource, name: string, into?: ReadBuffer): Float32Array {
  const t = source.read(name, into);
  if (t.data instanceof Float32Array) return t.data;
  if (t.data instanceof Float64Array) return Float32Array.from(t.data);
  const file = source.entries.get(name)?.file ?? source.description;
  throw new Error(`${file}: tensor '${name}' has dtype ${t.dtype}; model weights must be F32, F16, BF16 or F64`);
}
