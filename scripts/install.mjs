#!/usr/bin/env node
// `npm install` hook: makes a checkout usable in one step. (a) builds the native addon in release, unless a
// prebuilt one for this platform is present (an optional `pagedllm-<platform>` package, or a bundled .node and no
// Rust toolchain); (b) compiles the TypeScript; (c) fetches the default model.
// Opt-outs: PAGEDLLM_SKIP_NATIVE_BUILD=1, PAGEDLLM_SKIP_MODEL_FETCH=1.

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

import { ROOT, buildNative, buildTs, hasCargo, nativeBinaryPath, platformSuffix } from './build.mjs';
import { fetchModel } from './fetch-model.mjs';

const require = createRequire(import.meta.url);

async function phase(name, fn) {
  const t0 = performance.now();
  process.stderr.write(`pagedllm install: ${name}\n`);
  await fn();
  process.stderr.write(`pagedllm install: ${name} done in ${((performance.now() - t0) / 1000).toFixed(1)}s\n`);
}

function platformPackagePresent() {
  try {
    require.resolve(`pagedllm-${platformSuffix()}`, { paths: [ROOT] });
    return true;
  } catch {
    return false;
  }
}

async function main() {
  if (process.env.PAGEDLLM_SKIP_NATIVE_BUILD === '1') {
    process.stderr.write('pagedllm install: native build skipped (PAGEDLLM_SKIP_NATIVE_BUILD=1)\n');
  } else if (platformPackagePresent()) {
    process.stderr.write(`pagedllm install: using the prebuilt pagedllm-${platformSuffix()} package\n`);
  } else if (!hasCargo() && existsSync(nativeBinaryPath())) {
    process.stderr.write(`pagedllm install: using the bundled ${path.basename(nativeBinaryPath())} (no cargo found)\n`);
  } else {
    // cargo is incremental: when nothing changed this takes a second.
    await phase('building the native core (cargo, release; minutes on a first build)', () => buildNative());
  }

  // Always: a stale dist/ after a `git pull` would run old code (tsc takes seconds).
  await phase('compiling TypeScript', () => buildTs());

  if (process.env.PAGEDLLM_SKIP_MODEL_FETCH === '1') {
    process.stderr.write('pagedllm install: model fetch skipped (PAGEDLLM_SKIP_MODEL_FETCH=1)\n');
  } else {
    await phase('fetching the default model', () => fetchModel());
  }
}

main().catch((err) => {
  process.stderr.write(`pagedllm install failed: ${err?.message ?? err}\n`);
  process.exit(1);
});
