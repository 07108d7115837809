/**
 * LoRA adapters on the UNet's Linear and Conv2d layers, in PEFT's format: on a Linear
 * `<module>.lora_A.weight` [r, in] and `<module>.lora_B.weight` [out, r]; on a Conv2d
 * `lora_A` [r, in, kh, kw] (the layer's kernel, stride and padding) and `lora_B` [out, r, 1, 1].
 * Scale alpha / r, B initialised to zero so an attached adapter starts as the identity. Targets
 * match as PEFT's `target_modules` list does: a module whose name is, or ends with `.`, a target.
 * One model serves as frozen teacher (LoRA off) and LoRA teacher (LoRA on), as the official
 * SwiftBrush code does.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tf } from '../tf.ts';
import type { Tensor, Variable } from '../tf.ts';
import type { UNet2DConditionModel } from './unet_2d_condition.ts';
import { Conv2d, Linear, type LoraState } from './layers.ts';
import { ParamStore, tfToTorch, torchToTf } from './params.ts';
import { readFloat32, WeightFiles, type TensorSource } from './weights.ts';
import { writeJsonAtomic } from '../util/fs.ts';

export type { LoraState };

export interface LoraConfig {
  rank: number;
  alpha: number;
  /** Module names or suffixes, as PEFT's target_modules: e.g. `to_q`, `to_out.0`, `conv1`, `time_emb_proj`. */
  targetModules: string[];
}

export const DEFAULT_LORA_TARGETS = ['to_q', 'to_k', 'to_v', 'to_out.0'];
export const ADAPTER_WEIGHTS_NAME = 'adapter_model.safetensors';
export const ADAPTER_CONFIG_NAME = 'adapter_config.json';

type LoraLayer = Linear | Conv2d;

/** Every Linear and Conv2d of the model (diffusers module names), in a fixed order. */
function loraLayers(unet: UNet2DConditionModel): LoraLayer[] {
  const found: LoraLayer[] = [];
  const visit = (node: unknown, depth: number): void => {
    if (!node || typeof node !== 'object' || depth > 12) return;
    if (node instanceof Linear || node instanceof Conv2d) {
      found.push(node);
      return;
    }
    for (const [key, value] of Object.entries(node)) {
      if (key === 'store' || key === 'config' || key === 'loraState') continue;
      if (Array.isArray(value)) value.forEach((v) => visit(v, depth + 1));
      else visit(value, depth + 1);
    }
  };
  visit(unet, 0);
  return found;
}

/** PEFT's list form of target_modules: the name itself or a `.`-separated suffix of it. */
function matchesTarget(name: string, target: string): boolean {
  return name === target || name.endsWith(`.${target}`);
}

export class LoraAdapter {
  readonly store: ParamStore;
  readonly modules: LoraLayer[];

  private constructor(readonly unet: UNet2DConditionModel, readonly config: LoraConfig, seed: number) {
    this.store = new ParamStore(seed, true);
    const layers = loraLayers(unet);
    this.modules = layers.filter((l) => config.targetModules.some((t) => matchesTarget(l.name, t)));
    const unknown = config.targetModules.filter((t) => !this.modules.some((l) => matchesTarget(l.name, t)));
    if (unknown.length) {
      const known = [...new Set(layers.map((l) => l.name.split('.').filter((part) => !/^\d+$/.test(part)).pop()!))].sort();
      throw new Error(`LoRA target module(s) ${unknown.join(', ')} match no Linear or Conv2d of this UNet (its layer names end in: ${known.join(', ')})`);
    }
    if (!(config.rank >= 1 && Number.isInteger(config.rank))) throw new Error(`LoRA rank must be a positive integer, got ${config.rank}`);
    const scale = config.alpha / config.rank;
    const r = config.rank;
    for (const layer of this.modules) {
      if (layer.lora) throw new Error(`${layer.name} already has a LoRA adapter`);
      // PEFT: A ~ kaiming_uniform(a=√5) = U(±1/√fan_in); B = 0.
      const [A, B] = layer instanceof Linear
        ? [
            this.store.create(`${layer.name}.lora_A.weight`, 'linear', [r, layer.inFeatures], { fanIn: layer.inFeatures }),
            this.store.create(`${layer.name}.lora_B.weight`, 'linear', [layer.outFeatures, r], { constant: 0 }),
          ]
        : [
            this.store.create(`${layer.name}.lora_A.weight`, 'conv', [r, layer.inChannels, layer.kernel, layer.kernel], { fanIn: layer.inChannels * layer.kernel * layer.kernel }),
            this.store.create(`${layer.name}.lora_B.weight`, 'conv', [layer.outChannels, r, 1, 1], { constant: 0 }),
          ];
      layer.lora = { A, B, scale, state: unet.loraState };
    }
  }

  /** Attaches adapters to `unet` (disabled until `enable()`). */
  static attach(unet: UNet2DConditionModel, config: LoraConfig, seed = 0): LoraAdapter {
    return new LoraAdapter(unet, config, seed);
  }

  enable(): void {
    this.unet.loraState.enabled = true;
  }

  disable(): void {
    this.unet.loraState.enabled = false;
  }

  /** Runs `fn` with LoRA switched on or off, restoring the previous state after. */
  with<T>(enabled: boolean, fn: () => T): T {
    const before = this.unet.loraState.enabled;
    this.unet.loraState.enabled = enabled;
    try {
      return fn();
    } finally {
      this.unet.loraState.enabled = before;
    }
  }

  parameters(): Variable[] {
    return this.store.variables();
  }

  /** PEFT-layout copies: lora_A [r, in] / [r, in, kh, kw], lora_B [out, r] / [out, r, 1, 1]. */
  stateDict(): Record<string, { shape: number[]; data: Float32Array }> {
    const out: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (const [name, p] of this.store.params) {
      const t = tfToTorch(p.kind, p.variable);
      out[name] = { shape: p.torchShape, data: t.dataSync() as Float32Array };
      t.dispose();
    }
    return out;
  }

  /**
   * Assigns every adapter weight from PEFT-layout tensors: a Map held in memory or a source read
   * one tensor at a time (a file open for positioned reads). Keys may carry the prefixes diffusers
   * (`unet.`) and PEFT (`base_model.model.`) write.
   */
  loadStateDict(tensors: Map<string, { shape: number[]; data: object }> | TensorSource, source = 'LoRA state dict'): void {
    const from = tensors instanceof Map
      ? { keys: tensors.keys(), shape: (k: string) => tensors.get(k)!.shape, read: (k: string) => tensors.get(k)!.data as Float32Array }
      : { keys: tensors.entries.keys(), shape: (k: string) => tensors.entries.get(k)!.shape, read: (k: string) => readFloat32(tensors, k) };
    const strip = (k: string) => k.replace(/^(unet\.|base_model\.model\.)/, '');
    const byName = new Map([...from.keys].map((k) => [strip(k), k]));
    const missing = [...this.store.params.keys()].filter((k) => !byName.has(k));
    const unexpected = [...byName.keys()].filter((k) => !this.store.params.has(k));
    if (missing.length || unexpected.length) throw new Error(`${source}: ${missing.length ? `missing keys: ${missing.join(', ')} ` : ''}${unexpected.length ? `unexpected keys: ${unexpected.join(', ')}` : ''}`);
    for (const [name, p] of this.store.params) {
      const key = byName.get(name)!;
      const shape = from.shape(key);
      if (shape.join(',') !== p.torchShape.join(',')) throw new Error(`${source}: '${name}' has shape [${shape}], expected [${p.torchShape}]`);
      const value = torchToTf(p.kind, from.read(key), shape);
      p.variable.assign(value);
      value.dispose();
    }
  }

  /**
   * PEFT layout: `dir/adapter_model.safetensors` + `dir/adapter_config.json`, streamed one tensor at
   * a time. `weights`: device tensors keyed like the adapter's (a snapshot's clones) or host arrays
   * in PEFT layout; default the adapter's own weights.
   */
  async save(dir: string, weights?: Map<string, Tensor> | Record<string, { shape: number[]; data: Float32Array }>): Promise<void> {
    this.store.writeSafetensors(join(dir, ADAPTER_WEIGHTS_NAME), weights);
    await writeJsonAtomic(join(dir, ADAPTER_CONFIG_NAME), { peft_type: 'LORA', r: this.config.rank, lora_alpha: this.config.alpha, target_modules: this.config.targetModules, lora_dropout: 0, bias: 'none', init_lora_weights: 'gaussian' });
  }

  static async readConfig(dir: string): Promise<LoraConfig> {
    const raw = JSON.parse(await readFile(join(dir, ADAPTER_CONFIG_NAME), 'utf8')) as { r: number; lora_alpha: number; target_modules: string[] };
    return { rank: raw.r, alpha: raw.lora_alpha, targetModules: raw.target_modules };
  }

  static async load(unet: UNet2DConditionModel, dir: string): Promise<LoraAdapter> {
    const adapter = LoraAdapter.attach(unet, await LoraAdapter.readConfig(dir));
    const weights = WeightFiles.open(dir, ADAPTER_WEIGHTS_NAME);
    try {
      adapter.loadStateDict(weights, weights.description);
    } finally {
      weights.close();
    }
    return adapter;
  }

  /** Detaches from the model and frees the adapter weights. */
  dispose(): void {
    for (const layer of this.modules) layer.lora = null;
    this.store.dispose();
  }
}
