// No import cycles anywhere in the project's own modules (type-only imports count: a cycle of types
// still ties the modules' design together).
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseCircular, parseDependencyTree, shortenTree } from 'dpdm';

const root = fileURLToPath(new URL('..', import.meta.url));

describe('imports', () => {
  it('form no cycle', async () => {
    const tree = await parseDependencyTree(['src/**/*.ts', 'src/**/*.mjs', 'bench/**/*.ts', 'test/**/*.ts', 'bin/*.mjs'], {
      context: root,
      cwd: root,
      transform: false,
      skipDynamicImports: false,
    });
    const files = Object.keys(tree);
    expect(files.some((f) => f.endsWith('src/operators/state.ts'))).toBe(true);
    expect(parseCircular(shortenTree(root, tree))).toEqual([]);
  }, 60_000);
});
