/**
 * The run folder (`--out`): a run writes only names it owns, and never deletes what it did not
 * write. `OUT/run.json` marks a folder as a run of one command; a folder holding anything else is
 * refused by name. Starting afresh over a previous run is explicit (`overwrite`) and removes only
 * that run's files; `resume` continues it.
 */
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { writeJsonAtomic } from '../util/fs.ts';

export const RUN_MARKER = 'run.json';

/** The names a `distill` run writes in its folder (temp files of atomic writes included). */
const DISTILL_ENTRIES = [/^config\.json$/, /^checkpoint-\d+$/, /^samples$/, /^metrics\.jsonl$/, /^student$/, /^lora$/, /^\.checkpoint-\d+\.(tmp|old)-/, /^\..+\.tmp-\d+/];

/** Names each command's run folder may hold, beside run.json. */
export const RUN_ENTRIES: Record<string, RegExp[]> = {
  distill: DISTILL_ENTRIES,
  default: [...DISTILL_ENTRIES, /^best$/, /^eval\.json$/, /^grid\.png$/, /^sampling_speed\.json$/],
};

export interface RunFolderOptions {
  /** The command whose run this is (a key of RUN_ENTRIES). */
  command: string;
  resume?: boolean;
  overwrite?: boolean;
  /** How the user names the folder option in messages (default '--out'). */
  flag?: string;
}

const list = (names: string[]) => (names.length > 4 ? `${names.slice(0, 4).join(', ')} and ${names.length - 4} more` : names.join(', '));

/**
 * Checks `out` before a run writes anything and, with `overwrite`, removes the previous run's
 * files (only those). Throws, naming the folder and the entries, when the folder is a file, holds
 * anything the command does not write, holds another command's run, or holds a previous run and
 * neither `resume` nor `overwrite` was asked. Then marks the folder as this command's run.
 */
export async function prepareRunFolder(out: string, o: RunFolderOptions): Promise<void> {
  const flag = o.flag ?? '--out';
  if (o.resume && o.overwrite) throw new Error('--resume and --overwrite exclude each other: --resume continues the run in --out, --overwrite starts it afresh');
  const owned = RUN_ENTRIES[o.command];
  if (!owned) throw new Error(`no run folder layout for command '${o.command}'`);
  let names: string[];
  try {
    if (!(await stat(out)).isDirectory()) throw new Error(`${flag} ${out} is a file, not a folder: name a folder for the run`);
    names = await readdir(out);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    names = [];
  }
  if (names.length > 0) {
    const marker = names.includes(RUN_MARKER) ? await readMarker(out) : undefined;
    if (marker && marker.command !== o.command) {
      throw new Error(`${flag} ${out} holds a \`${marker.command}\` run, not a \`${o.command}\` one: choose another ${flag}`);
    }
    const entries = names.filter((n) => n !== RUN_MARKER);
    const foreign = entries.filter((n) => !owned.some((p) => p.test(n)));
    if (foreign.length) {
      throw new Error(`${flag} ${out} holds ${list(foreign)}, which a \`${o.command}\` run does not write: choose another ${flag} (a run never deletes what it did not write)`);
    }
    // A folder written before run.json existed counts as a run when it has a config and results.
    const isRun = Boolean(marker) || (entries.includes('config.json') && entries.some((n) => /^checkpoint-\d+$/.test(n) || n === 'student'));
    if (entries.length > 0 && !isRun) {
      throw new Error(`${flag} ${out} holds ${list(entries)} but no ${RUN_MARKER}: not a run folder, so nothing in it is touched; choose another ${flag}`);
    }
    if (entries.length > 0 && !o.resume) {
      if (!o.overwrite) {
        throw new Error(`${flag} ${out} holds a previous \`${o.command}\` run (${list(entries)}): --resume continues it, --overwrite starts afresh (removing only that run's files), or choose another ${flag}`);
      }
      for (const name of entries) await rm(join(out, name), { recursive: true, force: true });
    }
  }
  await writeJsonAtomic(join(out, RUN_MARKER), { command: o.command });
}

async function readMarker(out: string): Promise<{ command: string }> {
  const path = join(out, RUN_MARKER);
  try {
    const json = JSON.parse(await readFile(path, 'utf8')) as { command?: unknown };
    if (typeof json.command === 'string') return { command: json.command };
  } catch {
    // fall through
  }
  throw new Error(`${path} is not a swiftbrush run marker (expected {"command": …}): choose another folder`);
}
