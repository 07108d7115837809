#!/usr/bin/env node
/**
 * `npm run native:build -- path/to/tensorflow_cpu-*.whl`
 *
 * Builds the optional native backend (@tensorflow/tfjs-node) without its install script, whose
 * libtensorflow download fails on air-gapped or proxied machines. Instead it takes the TensorFlow C
 * API from a tensorflow-cpu wheel (`pip download tensorflow-cpu==2.21.0 --no-deps -d DIR`):
 *
 * 1. `npm install --no-save --ignore-scripts @tensorflow/tfjs-node@<tfjs version>`; package.json and
 *    package-lock.json are checked byte for byte afterwards (and restored if npm touched them).
 * 2. Extracts from the wheel (a zip: `unzip` if on PATH, else adm-zip, a dependency of tfjs-node)
 *    the C API headers the binding includes (followed transitively) into deps/include, and
 *    libtensorflow_cc.so.2 + libtensorflow_framework.so.2 into deps/lib, with the names
 *    binding.gyp links against (`-ltensorflow -ltensorflow_framework`, rpath $ORIGIN/../../deps/lib).
 * 3. Compiles the addon with npm's node-gyp and places it where tfjs-node loads it
 *    (node-pre-gyp's `find`, i.e. the package.json "binary" field: lib/napi-v<N>/tfjs_binding.node).
 * 4. Loads @tensorflow/tfjs-node in a child process and runs one op as a smoke test.
 *
 * `npm ci` removes node_modules, so run this again after it. Nothing here is needed by tests or CI.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const NM = path.join(ROOT, 'node_modules');
const TFJS_NODE = path.join(NM, '@tensorflow', 'tfjs-node');
const TFJS_NODE_GPU = path.join(NM, '@tensorflow', 'tfjs-node-gpu');
const WHEEL_INCLUDE = 'tensorflow/include/';
const WHEEL_LIBS = { 'tensorflow/libtensorflow_cc.so.2': 'libtensorflow_cc.so.2', 'tensorflow/libtensorflow_framework.so.2': 'libtensorflow_framework.so.2' };
// Link-time and runtime names in deps/lib. The binary records the SONAMEs (libtensorflow_cc.so.2,
// libtensorflow_framework.so.2); libtensorflow.so.2 is the name tfjs-node's own download uses.
const LIB_LINKS = { 'libtensorflow.so': 'libtensorflow_cc.so.2', 'libtensorflow.so.2': 'libtensorflow_cc.so.2', 'libtensorflow_framework.so': 'libtensorflow_framework.so.2' };

const log = (msg) => process.stderr.write(`native:build: ${msg}\n`);
function fail(msg) {
  log(`error: ${msg}`);
  process.exit(1);
}
function run(cmd, args, opts = {}) {
  log(`$ ${[cmd, ...args].join(' ')}`);
  const r = spawnSync(cmd, args, { stdio: 'inherit', ...opts });
  if (r.error) fail(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) fail(`${cmd} exited with ${r.status}`);
}
function onPath(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

// ---------------------------------------------------------------------------------------------
// Arguments.
const args = process.argv.slice(2);
if (args.includes('--help') || args.includes('-h') || args.length !== 1) {
  process.stderr.write('usage: npm run native:build -- path/to/tensorflow_cpu-<version>-<python>-manylinux_*_x86_64.whl\n' +
    '  get the wheel with: pip download tensorflow-cpu==2.21.0 --no-deps -d DIR\n');
  process.exit(args.length === 1 ? 0 : 2);
}
const wheel = path.resolve(args[0]);
if (!fs.existsSync(wheel)) fail(`no such file: ${wheel}`);
if (os.platform() !== 'linux' || os.arch() !== 'x64') fail(`only linux x64 is supported (this is ${os.platform()} ${os.arch()}); the wheel's libraries are linux x86_64`);
if (!/x86_64\.whl$/.test(wheel)) fail(`${path.basename(wheel)} does not look like a linux x86_64 tensorflow wheel`);

// ---------------------------------------------------------------------------------------------
// A zip reader: `unzip` when present, otherwise adm-zip (installed with tfjs-node in step 1).
function openZip(file) {
  if (onPath('unzip')) {
    const names = execFileSync('unzip', ['-Z1', file], { maxBuffer: 64 << 20, encoding: 'utf8' }).split('\n').filter(Boolean);
    return {
      names,
      read: (name) => execFileSync('unzip', ['-p', file, name], { maxBuffer: 64 << 20 }),
      extractTo: (name, dest) => {
        const tmp = `${dest}.tmp`;
        const fd = fs.openSync(tmp, 'w');
        try {
          const r = spawnSync('unzip', ['-p', file, name], { stdio: ['ignore', fd, 'inherit'] });
          if (r.status !== 0) fail(`unzip -p ${name} exited with ${r.status}`);
        } finally {
          fs.closeSync(fd);
        }
        fs.renameSync(tmp, dest);
      },
      size: (name) => {
        const line = execFileSync('unzip', ['-Zl', file, name], { encoding: 'utf8' }).trim().split(/\s+/);
        return Number(line[3]);
      },
    };
  }
  const AdmZip = createRequire(path.join(TFJS_NODE, 'package.json'))('adm-zip');
  log('unzip not found; reading the wheel with adm-zip (loads it into memory)');
  const zip = new AdmZip(file);
  const entries = new Map(zip.getEntries().map((e) => [e.entryName, e]));
  return {
    names: [...entries.keys()],
    read: (name) => entries.get(name).getData(),
    extractTo: (name, dest) => {
      fs.writeFileSync(`${dest}.tmp`, entries.get(name).getData());
      fs.renameSync(`${dest}.tmp`, dest);
    },
    size: (name) => entries.get(name).header.size,
  };
}

// ---------------------------------------------------------------------------------------------
// 1. Install tfjs-node's JS without its download script.
const tfjsVersion = JSON.parse(fs.readFileSync(path.join(NM, '@tensorflow', 'tfjs', 'package.json'), 'utf8')).version;
const installedVersion = fs.existsSync(path.join(TFJS_NODE, 'package.json')) ? JSON.parse(fs.readFileSync(path.join(TFJS_NODE, 'package.json'), 'utf8')).version : null;
if (installedVersion === tfjsVersion) {
  log(`@tensorflow/tfjs-node@${tfjsVersion} already installed`);
} else {
  const gpuBefore = fs.existsSync(TFJS_NODE_GPU);
  const guarded = ['package.json', 'package-lock.json'].map((f) => [f, fs.existsSync(path.join(ROOT, f)) ? fs.readFileSync(path.join(ROOT, f)) : null]);
  const npm = process.env.npm_execpath && fs.existsSync(process.env.npm_execpath) ? [process.execPath, [process.env.npm_execpath]] : ['npm', []];
  run(npm[0], [...npm[1], 'install', '--no-save', '--ignore-scripts', '--no-audit', '--no-fund', `@tensorflow/tfjs-node@${tfjsVersion}`], { cwd: ROOT });
  for (const [f, before] of guarded) {
    const now = fs.existsSync(path.join(ROOT, f)) ? fs.readFileSync(path.join(ROOT, f)) : null;
    if (before && (!now || !before.equals(now))) {
      fs.writeFileSync(path.join(ROOT, f), before);
      log(`npm modified ${f}; restored it`);
    }
  }
  // --ignore-scripts also installs the optional @tensorflow/tfjs-node-gpu, without its binding.
  // Such a copy only fails to load (after registering its kernels), so remove it again when it
  // was not there before.
  if (!gpuBefore && fs.existsSync(TFJS_NODE_GPU) && !fs.existsSync(path.join(TFJS_NODE_GPU, 'lib'))) {
    fs.rmSync(TFJS_NODE_GPU, { recursive: true, force: true });
    log('removed the binding-less @tensorflow/tfjs-node-gpu that --ignore-scripts left behind');
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Headers and libraries from the wheel.
const zip = openZip(wheel);
const inWheel = new Set(zip.names);
for (const name of Object.keys(WHEEL_LIBS)) if (!inWheel.has(name)) fail(`${name} is not in ${path.basename(wheel)} (a tensorflow-cpu 2.x manylinux wheel has it)`);

const depsInclude = path.join(TFJS_NODE, 'deps', 'include');
const depsLib = path.join(TFJS_NODE, 'deps', 'lib');
fs.rmSync(depsInclude, { recursive: true, force: true });
fs.mkdirSync(depsInclude, { recursive: true });
fs.mkdirSync(depsLib, { recursive: true });

// The headers the binding includes, and the quoted includes of those, found in the wheel.
const includeRe = /^\s*#\s*include\s+"([^"]+)"/gm;
const bindingDir = path.join(TFJS_NODE, 'binding');
const queue = [];
for (const f of fs.readdirSync(bindingDir)) {
  const text = fs.readFileSync(path.join(bindingDir, f), 'utf8');
  for (const m of text.matchAll(includeRe)) if (inWheel.has(WHEEL_INCLUDE + m[1])) queue.push(m[1]);
}
if (!queue.includes('tensorflow/c/c_api.h')) fail(`the wheel has no ${WHEEL_INCLUDE}tensorflow/c/c_api.h`);
const seen = new Set();
const missing = new Set();
while (queue.length) {
  const h = queue.pop();
  if (seen.has(h)) continue;
  seen.add(h);
  if (!inWheel.has(WHEEL_INCLUDE + h)) {
    missing.add(h);
    continue;
  }
  const data = zip.read(WHEEL_INCLUDE + h);
  fs.mkdirSync(path.dirname(path.join(depsInclude, h)), { recursive: true });
  fs.writeFileSync(path.join(depsInclude, h), data);
  for (const m of data.toString('utf8').matchAll(includeRe)) queue.push(m[1]);
}
log(`copied ${seen.size - missing.size} C API headers into deps/include${missing.size ? ` (not in the wheel: ${[...missing].join(', ')})` : ''}`);

for (const [name, file] of Object.entries(WHEEL_LIBS)) {
  const dest = path.join(depsLib, file);
  if (fs.existsSync(dest) && fs.statSync(dest).size === zip.size(name)) {
    log(`deps/lib/${file} is up to date`);
    continue;
  }
  log(`extracting ${name} (${(zip.size(name) / 2 ** 20).toFixed(0)} MiB)`);
  zip.extractTo(name, dest);
}
for (const [link, target] of Object.entries(LIB_LINKS)) {
  fs.rmSync(path.join(depsLib, link), { force: true });
  fs.symlinkSync(target, path.join(depsLib, link));
}

// ---------------------------------------------------------------------------------------------
// 3. Compile with node-gyp, into the path tfjs-node loads (node-pre-gyp decides it).
const requireFromTfjsNode = createRequire(path.join(TFJS_NODE, 'package.json'));
const bindingPath = requireFromTfjsNode('@mapbox/node-pre-gyp').find(path.join(TFJS_NODE, 'package.json'));
const napi = /napi-v(\d+)/.exec(bindingPath)?.[1];
if (!napi) fail(`cannot tell the N-API version from ${bindingPath}`);

function nodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  if (process.env.npm_execpath) candidates.push(path.join(path.dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  for (const c of candidates) if (c && fs.existsSync(c)) return [process.execPath, [c]];
  if (onPath('node-gyp')) return ['node-gyp', []];
  fail('node-gyp not found (it ships with npm; or `npm install -g node-gyp`)');
}
const gypArgs = ['rebuild', `--jobs=${os.availableParallelism?.() ?? os.cpus().length}`, `--module_name=tfjs_binding`, `--module_path=${path.dirname(bindingPath)}`, `--napi_build_version=${napi}`];
// Offline: use the installed Node headers instead of downloading them.
const prefix = path.resolve(path.dirname(process.execPath), '..');
if (!process.env.npm_config_nodedir && fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h'))) gypArgs.push(`--nodedir=${prefix}`);
const [gypCmd, gypPre] = nodeGyp();
const t0 = Date.now();
run(gypCmd, [...gypPre, ...gypArgs], { cwd: TFJS_NODE });
if (!fs.existsSync(bindingPath)) {
  fs.mkdirSync(path.dirname(bindingPath), { recursive: true });
  fs.copyFileSync(path.join(TFJS_NODE, 'build', 'Release', 'tfjs_binding.node'), bindingPath);
}
log(`compiled ${path.relative(ROOT, bindingPath)} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

// ---------------------------------------------------------------------------------------------
// 4. Smoke test in a fresh process.
const smoke = `
  const tf = require('@tensorflow/tfjs-node');
  tf.env().set('PROD', true);
  const y = tf.matMul(tf.tensor2d([[1, 2], [3, 4]]), tf.tensor2d([[1], [1]])).dataSync();
  if (tf.getBackend() !== 'tensorflow' || y[0] !== 3 || y[1] !== 7) { console.error('bad result', tf.getBackend(), y); process.exit(1); }
  console.log('backend ' + tf.getBackend() + ', libtensorflow ' + tf.backend().binding.TF_Version);
`;
const r = spawnSync(process.execPath, ['-e', smoke], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, TF_CPP_MIN_LOG_LEVEL: process.env.TF_CPP_MIN_LOG_LEVEL ?? '2' } });
if (r.status !== 0) fail(`@tensorflow/tfjs-node does not load:\n${r.stderr}${r.stdout}`);
log(`ok: ${r.stdout.trim()}. \`npx swiftbrush backend\` should now print "tensorflow (@tensorflow/tfjs-node)".`);
