// The package as a user gets it: the built JavaScript (dist/, `npm run build`, which `npm test` runs
// first) imported by the package's name with plain node, and the README's custom-operator example
// run as written from a scratch package that installed this repository.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const built = join(root, 'dist', 'index.js');
const node = process.execPath;

/** The README's ```js block under "A custom operator". */
function readmeExample(): string {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('A custom operator'));
  const block = /```js\n([\s\S]*?)```/.exec(section);
  if (!block) throw new Error('README.md: no ```js block after "A custom operator"');
  return block[1]!;
}

function run(cmd: string, args: string[], cwd: string, timeout = 300_000): string {
  try {
    return execFileSync(cmd, args, { cwd, encoding: 'utf8', timeout, env: { ...process.env, SWIFTBRUSH_LOG_LEVEL: 'warn', VITEST: undefined } });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed in ${cwd}: ${e.message}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`);
  }
}

describe('the package', () => {
  if (!existsSync(built)) throw new Error(`${built} is missing: run \`npm run build\` (npm test does) before this test`);

  it('imports by its name under plain node (no TypeScript loader)', () => {
    const script = "const m = await import('swiftbrush-rx'); console.log(JSON.stringify(['distill', 'runDistillation', 'embeddingBatches', 'initBackend', 'studentForward', 'UNet2DConditionModel', 'readSafetensors', 'EmbeddingFile'].map((k) => typeof m[k])));";
    const out = run(node, ['--input-type=module', '-e', script], root);
    expect(JSON.parse(out)).toEqual(Array(8).fill('function'));
  });

  it('refuses an unknown option by name', () => {
    const script = "const { runDistillation } = await import('swiftbrush-rx'); await runDistillation({ teacher: 't', embeddings: 'e', out: 'o', steps: 1, batchSize: 4 }).then(() => console.log('accepted'), (e) => console.log(e.message));";
    const out = run(node, ['--input-type=module', '-e', script], root);
    expect(out).toMatch(/unknown option 'batchSize' \(a training setting: pass it as config: \{ batchSize \}\)/);
  });

  describe('from a scratch package (npm install of this repository)', () => {
    const scratch = mkdtempSync(join(tmpdir(), 'swiftbrush-user-'));
    afterAll(() => rmSync(scratch, { recursive: true, force: true }));

    it("runs the README's custom-operator example as written, and it type-checks in strict mode", () => {
      writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'user', private: true, type: 'module' }));
      // A user runs `npm install PATH/TO/swiftbrush-rx rxjs`; offline, rxjs (a peer dependency) comes
      // from this repository's node_modules instead of the registry.
      run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--ignore-scripts', root, join(root, 'node_modules', 'rxjs')], scratch, 300_000);
      const example = readmeExample();
      writeFileSync(join(scratch, 'example.mjs'), example);
      writeFileSync(join(scratch, 'example.mts'), example);
      // The probe must fail: it shows that the context is typed (not `any`) where the example uses it.
      writeFileSync(join(scratch, 'probe.mts'), "import { tap } from 'rxjs';\nimport type { StepContext } from 'swiftbrush-rx';\nexport const probe = (ops: () => import('rxjs').OperatorFunction<StepContext, StepContext>[]) => ops;\nprobe(() => [tap((ctx) => { const s: string = ctx.microStep; })]);\n");
      const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
      const args = [tsc, '--noEmit', '--strict', '--target', 'es2022', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--skipLibCheck', '--typeRoots', join(root, 'node_modules', '@types'), '--types', 'node', 'example.mts', 'probe.mts'];
      let typeErrors = '';
      try {
        execFileSync(node, args, { cwd: scratch, encoding: 'utf8', stdio: 'pipe' });
      } catch (err) {
        typeErrors = String((err as { stdout?: string }).stdout);
      }
      expect(typeErrors.trim().split('\n')).toEqual([expect.stringMatching(/^probe\.mts\(4,\d+\): error TS2322: Type 'number' is not assignable to type 'string'\.$/)]);
      const out = run(node, ['example.mjs'], scratch);
      expect(out).toMatch(/micro-batch 0: VSD loss \d/);
      expect(out).toContain(`student: ${join('runs', 'example', 'student')}`);
      expect(existsSync(join(scratch, 'runs', 'example', 'student', 'unet', 'diffusion_pytorch_model.safetensors'))).toBe(true);
    }, 900_000);
  });
});
