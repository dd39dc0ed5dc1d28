#!/usr/bin/env node
// Builds pagedllm: the native addon (Rust, through the napi-rs CLI when it is installed, else plain cargo plus a
// copy to the napi file name) into bindings/pagedllm.<platform>.node, then the TypeScript into dist/ (plus the
// playground page's sources, scripts/build-playground.mjs).
//   node scripts/build.mjs                 native (release) + TypeScript
//   node scripts/build.mjs --native-only   native only
//   node scripts/build.mjs --ts-only       TypeScript only
//   --debug                                 debug native build (fast to compile, slow to run)
// PAGEDLLM_CUDA=1 adds the CUDA backend (cargo feature `cuda`); its kernels need nvcc, which is taken from $NVCC,
// $CUDA_HOME, PATH, /usr/local/cuda, or else installed from NVIDIA's PyPI wheels (scripts/install-nvcc.sh).

import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { buildPlayground } from './build-playground.mjs';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
const require = createRequire(import.meta.url);

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: 'inherit', ...opts });
  if (r.error) throw new Error(`could not run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed with exit code ${r.status ?? r.signal}`);
}

export function platformSuffix() {
  const base = `${process.platform}-${process.arch}`;
  if (process.platform === 'linux') {
    const glibc = process.report?.getReport()?.header?.glibcVersionRuntime;
    return `${base}-${glibc ? 'gnu' : 'musl'}`;
  }
  return process.platform === 'win32' ? `${base}-msvc` : base;
}

export function nativeBinaryPath() {
  return path.join(ROOT, 'bindings', `pagedllm.${platformSuffix()}.node`);
}

export function hasCargo() {
  return spawnSync('cargo', ['--version'], { stdio: 'ignore' }).status === 0;
}

/** rustc's host target triple (`x86_64-unknown-linux-gnu`, ...). */
function hostTriple() {
  const r = spawnSync('rustc', ['-vV'], { encoding: 'utf8' });
  const host = r.status === 0 && /^host: (\S+)$/m.exec(r.stdout)?.[1];
  if (!host) throw new Error('could not read the host target from `rustc -vV` (is Rust installed? see https://rustup.rs)');
  return host;
}

function resolveBin(pkg, bin) {
  try {
    const pkgJson = require.resolve(`${pkg}/package.json`, { paths: [ROOT] });
    const meta = require(pkgJson);
    const rel = typeof meta.bin === 'string' ? meta.bin : meta.bin?.[bin];
    return rel ? path.join(path.dirname(pkgJson), rel) : null;
  } catch {
    return null;
  }
}

/** Cargo feature flags for this build (the CUDA backend when PAGEDLLM_CUDA=1). */
function featureArgs() {
  if (process.env.PAGEDLLM_CUDA !== '1') return [];
  const hasNvcc =
    process.env.NVCC ||
    process.env.CUDA_HOME ||
    spawnSync('nvcc', ['--version'], { stdio: 'ignore' }).status === 0 ||
    existsSync('/usr/local/cuda/bin/nvcc');
  if (!hasNvcc) {
    const r = spawnSync('bash', [path.join(ROOT, 'scripts', 'install-nvcc.sh')], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    if (r.status !== 0) throw new Error('PAGEDLLM_CUDA=1 needs nvcc and scripts/install-nvcc.sh could not install it');
    process.env.NVCC = r.stdout.trim();
  }
  return ['--features', 'cuda'];
}

export function buildNative({ debug = false } = {}) {
  if (!hasCargo()) throw new Error('building the native core needs a Rust toolchain (cargo); see https://rustup.rs');
  const features = featureArgs();
  const napi = resolveBin('@napi-rs/cli', 'napi');
  if (napi) {
    const args = ['build', '--platform', '--manifest-path', 'bindings/Cargo.toml', '--package-json-path', 'package.json'];
    args.push('--output-dir', 'bindings', '--no-js', '--dts', 'index.d.ts');
    if (!debug) args.push('--release');
    args.push(...features);
    run(process.execPath, [napi, ...args]);
    return nativeBinaryPath();
  }
  // No napi CLI (installed as a dependency without devDependencies): cargo builds the same cdylib. With an explicit
  // --target, as `napi build --platform` passes, so both share target/<triple>/ (a shared CARGO_TARGET_DIR then
  // reuses the registry crates a napi build compiled).
  const triple = hostTriple();
  const args = ['build', '-p', 'pagedllm-node', '--manifest-path', path.join(ROOT, 'Cargo.toml'), '--target', triple, ...features];
  if (!debug) args.push('--release');
  run('cargo', args);
  const targetDir = process.env.CARGO_TARGET_DIR ? path.resolve(process.env.CARGO_TARGET_DIR) : path.join(ROOT, 'target');
  const lib =
    process.platform === 'win32' ? 'pagedllm_node.dll' : process.platform === 'darwin' ? 'libpagedllm_node.dylib' : 'libpagedllm_node.so';
  const built = path.join(targetDir, triple, debug ? 'debug' : 'release', lib);
  if (!existsSync(built)) throw new Error(`cargo finished but ${built} is missing`);
  copyFileSync(built, nativeBinaryPath());
  return nativeBinaryPath();
}

export function buildTs() {
  const tsc = resolveBin('typescript', 'tsc');
  if (!tsc) throw new Error('compiling TypeScript needs the `typescript` package (run `npm install` in the repository)');
  run(process.execPath, [tsc, '-p', 'tsconfig.build.json']);
  chmodSync(path.join(ROOT, 'dist', 'cli.js'), 0o755);
  buildPlayground(); // the playground page's HTML/CSS/JS, next to its compiled loader
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  const flags = new Set(process.argv.slice(2));
  try {
    if (!flags.has('--ts-only')) buildNative({ debug: flags.has('--debug') });
    if (!flags.has('--native-only')) buildTs();
  } catch (err) {
    process.stderr.write(`error: ${err.message}\n`);
    process.exit(1);
  }
}
