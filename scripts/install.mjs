#!/usr/bin/env node
// `npm install` hook. In a git checkout: builds the native addon from source (cargo, release), compiles the
// TypeScript, fetches the default model. In the installed npm package: uses the prebuilt `pagedllm-<platform>`
// package npm picked from the optionalDependencies (no Rust toolchain needed) and the shipped dist/ (no tsc);
// it builds from source only as the fallback: no prebuilt package for this platform, PAGEDLLM_BUILD_FROM_SOURCE=1,
// or PAGEDLLM_CUDA=1 without the `-cuda` package. Then the default model, as in a checkout (an installed
// package only warns when that fails: LLM.create fetches it again on first use).
// Opt-outs: PAGEDLLM_SKIP_NATIVE_BUILD=1, PAGEDLLM_SKIP_MODEL_FETCH=1.

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

import { ROOT, buildNative, buildTs, hasCargo, nativeBinaryPath, platformSuffix } from './build.mjs';
import { fetchModel } from './fetch-model.mjs';

const require = createRequire(import.meta.url);
const log = (line) => process.stderr.write(`pagedllm install: ${line}\n`);

async function phase(name, fn) {
  const t0 = performance.now();
  log(name);
  await fn();
  log(`${name} done in ${((performance.now() - t0) / 1000).toFixed(1)}s`);
}

/** A checkout has the TypeScript sources; the npm tarball ships only dist/. */
const isCheckout = existsSync(path.join(ROOT, 'src', 'index.ts'));

function resolvable(name) {
  try {
    // Resolved from the package root: npm puts the optional dependency beside us or in our node_modules.
    require.resolve(name, { paths: [ROOT] });
    return true;
  } catch {
    return false;
  }
}

/** The prebuilt package this install uses. The `-cuda` addon has both backends, so it also serves a CPU install
 * (a user may install only the CUDA variant, e.g. with optional dependencies omitted). */
function prebuiltPackage() {
  const cpu = `pagedllm-${platformSuffix()}`;
  const cuda = `${cpu}-cuda`;
  const wanted = process.env.PAGEDLLM_CUDA === '1' ? [cuda] : [cpu, cuda];
  const found = wanted.find(resolvable);
  return { name: found ?? wanted[0], present: found !== undefined };
}

function nativeStep() {
  if (process.env.PAGEDLLM_SKIP_NATIVE_BUILD === '1') return log('native build skipped (PAGEDLLM_SKIP_NATIVE_BUILD=1)');
  const prebuilt = prebuiltPackage();
  const fromSource = isCheckout || process.env.PAGEDLLM_BUILD_FROM_SOURCE === '1';
  if (!fromSource && prebuilt.present) return log(`using the prebuilt ${prebuilt.name} package (no compile)`);
  if (!fromSource && existsSync(nativeBinaryPath())) return log(`using the existing ${nativeBinaryPath()}`);
  if (!hasCargo()) {
    throw new Error(
      `no prebuilt ${prebuilt.name} package is installed and cargo is not on PATH. Install the package ` +
        `(\`npm install ${prebuilt.name}\`; npm skips it when optional dependencies are omitted), or install Rust ` +
        '(https://rustup.rs) for the source build',
    );
  }
  const why = isCheckout ? 'a checkout' : process.env.PAGEDLLM_BUILD_FROM_SOURCE === '1' ? 'PAGEDLLM_BUILD_FROM_SOURCE=1' : `no ${prebuilt.name}`;
  // cargo is incremental: when nothing changed this takes seconds.
  return phase(`building the native core from source (${why}; cargo, release; minutes on a first build)`, () => buildNative());
}

async function main() {
  await nativeStep();
  if (isCheckout) {
    // Always in a checkout: a stale dist/ after a `git pull` would run old code (tsc takes seconds).
    await phase('compiling TypeScript', () => buildTs());
  } else if (!existsSync(path.join(ROOT, 'dist', 'index.js'))) {
    throw new Error(`${path.join(ROOT, 'dist')} is missing: this package was packed without its build output`);
  }

  if (process.env.PAGEDLLM_SKIP_MODEL_FETCH === '1') return log('model fetch skipped (PAGEDLLM_SKIP_MODEL_FETCH=1)');
  try {
    await phase('fetching the default model', () => fetchModel());
  } catch (err) {
    if (isCheckout) throw err;
    log(`warning: ${err.message}; LLM.create() without a model will try again`);
  }
}

main().catch((err) => {
  process.stderr.write(`pagedllm install failed: ${err?.message ?? err}\n`);
  process.exit(1);
});
