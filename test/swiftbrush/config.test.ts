/** The settings schema: types and ranges refused by name, complete round trips, resume merging. */
import { describe, expect, it } from 'vitest';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { OFFICIAL_DEFAULTS, RUN_DEFAULTS, SETTINGS, SETTING_KEYS, checkSettings, distillConfig, formatChanges, resumeSettings, type RunSettings } from '../../src/swiftbrush/config.ts';
import { readConfigFile, register } from '../../src/cli/distill.ts';

describe('settings schema', () => {
  it('every setting is either required or has a default, and the defaults pass their own checks', () => {
    for (const key of SETTING_KEYS) {
      const s = SETTINGS[key];
      expect(s.required || s.default !== undefined, key).toBe(true);
      if (s.default !== undefined) expect(() => checkSettings({ [key]: s.default }), key).not.toThrow();
    }
    expect(OFFICIAL_DEFAULTS).toMatchObject({ batchSize: 16, guidanceScale: 4.5, loraRank: 64, loraAlpha: 108, loraTargets: ['to_q', 'to_v'], emaDecay: 0.9999 });
    expect(RUN_DEFAULTS).toEqual({ checkpointEvery: 500, checkpointsTotalLimit: 3, validationEvery: 100, validationPrompts: 8, prefetch: 2, rawWeights: false });
  });

  it.each([
    [{ guidanceScale: '2.5' }, /guidanceScale must be a number, got "2.5" \(a string\)/],
    [{ batchSize: 2.5 }, /batchSize must be an integer, got 2.5/],
    [{ batchSize: 0 }, /batchSize must be ≥ 1, got 0/],
    [{ emaDecay: 1 }, /emaDecay must be in \[0, 1\), got 1/],
    [{ loraNullPromptProb: -0.1 }, /loraNullPromptProb must be in \[0, 1\], got -0.1/],
    [{ loraTargets: [] }, /loraTargets must be a non-empty list/],
    [{ lrScheduler: 'step' }, /lrScheduler must be 'constant', 'linear' or 'cosine', got "step"/],
    [{ rawWeights: 'yes' }, /rawWeights must be true or false, got "yes"/],
    [{ tMin: 500, tMax: 100 }, /tMin \(500\) must not exceed tMax \(100\)/],
    [{ checkpoint_every: 3 }, /unknown key\(s\) checkpoint_every \(did you mean checkpointEvery\?\)/],
  ])('%o is refused by name', (raw, message) => {
    expect(() => checkSettings(raw as Record<string, unknown>, 'c.json: ')).toThrow(message);
  });

  it('a comma string of LoRA targets becomes a list', () => {
    expect(distillConfig({ loraTargets: 'to_q, to_k' as never }).loraTargets).toEqual(['to_q', 'to_k']);
  });
});

describe('config.json round trip', () => {
  it('a complete settings object is accepted back by --config unchanged', async () => {
    const settings = { ...OFFICIAL_DEFAULTS, ...RUN_DEFAULTS, teacher: 't', embeddings: ['/a.parquet'], out: 'o', steps: 7, guidanceScale: 2.5, loraRank: 4 } as RunSettings;
    expect(Object.keys(settings).sort()).toEqual([...SETTING_KEYS].sort());
    const dir = await mkdtemp(join(tmpdir(), 'sb-config-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify(settings));
    expect(await readConfigFile(join(dir, 'config.json'))).toEqual(settings);
  });

  it('--config refuses a value of the wrong type with the file and the key', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sb-config-'));
    await writeFile(join(dir, 'c.json'), JSON.stringify({ guidanceScale: '2.5' }));
    await expect(readConfigFile(join(dir, 'c.json'))).rejects.toThrow(`--config ${join(dir, 'c.json')}: guidanceScale must be a number, got "2.5" (a string)`);
  });

  it('distill has a flag for every setting, and its help shows each default or marks it required', () => {
    const program = new Command('swiftbrush');
    register(program);
    const distill = program.commands.find((c) => c.name() === 'distill')!;
    const help = distill.helpInformation();
    for (const key of SETTING_KEYS) {
      const option = distill.options.find((o) => o.attributeName() === key);
      expect(option, key).toBeDefined();
      expect(option!.description, key).toMatch(SETTINGS[key].required ? /\(required; or "\w+" in --config\)/ : SETTINGS[key].kind === 'boolean' ? /./ : /\(default: [^)]+\)/);
    }
    expect(help).not.toMatch(/official official/);
    expect(help).toMatch(/--grad-accum <k>\s+micro-batches per optimiser step \(default: 1\)/);
  });
});

describe('resumeSettings', () => {
  const saved = { ...OFFICIAL_DEFAULTS, ...RUN_DEFAULTS, teacher: '/t', embeddings: ['/e.parquet'], out: 'o', steps: 10, batchSize: 2, guidanceScale: 2.5, emaDecay: 0.9, loraRank: 4 } as RunSettings;

  it('keeps the checkpoint\'s settings, lets given ones override them and lists the changes', () => {
    const r = resumeSettings(saved, { guidanceScale: 3, steps: 20, batchSize: 2 }, { checkpoint: 'o/checkpoint-5' });
    expect(r.settings).toMatchObject({ batchSize: 2, guidanceScale: 3, emaDecay: 0.9, loraRank: 4, steps: 20 });
    expect(formatChanges(r.changes)).toBe('steps 10 → 20, guidanceScale 2.5 → 3');
  });

  it.each([
    [{ loraRank: 16 }, /--resume: loraRank cannot change \(--lora-rank\): o\/checkpoint-5 was trained with 4, asked for 16/],
    [{ loraAlpha: 1 }, /loraAlpha cannot change/],
    [{ loraTargets: ['to_k'] }, /loraTargets cannot change \(--lora-targets\): .* trained with to_q,to_v, asked for to_k/],
    [{ teacher: '/other' }, /teacher cannot change \(--teacher\)/],
  ])('refuses %o by name', (given, message) => {
    expect(() => resumeSettings(saved, given as Partial<RunSettings>, { checkpoint: 'o/checkpoint-5' })).toThrow(message);
  });
});
