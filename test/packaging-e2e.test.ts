/**
 * The packaging end to end, as a user meets it (issue 9). Heavy (a registry, real installs, one cargo build), so
 * it runs only with PAGEDLLM_PACKAGING_E2E=1: `.ci/run` has a phase for it. Steps:
 * 1. pack the linux-x64-gnu platform package (the addon `npm install` in this checkout already built; no rebuild)
 *    and the main package with scripts/package/pack.mjs, the release workflow's own packing step;
 * 2. publish both to Verdaccio on 127.0.0.1 (test/local-registry.ts);
 * 3. in an empty directory, with cargo and rustc NOT on PATH and an empty npm cache: `npm install pagedllm`,
 *    `npx pagedllm generate "The capital of France is"` answers Paris, an ESM script imports and runs `LLM`,
 *    and a TypeScript file type-checks against the installed .d.ts;
 * 4. the source fallback: install the packed main tarball in another empty directory (no git checkout) without
 *    optional dependencies and with PAGEDLLM_BUILD_FROM_SOURCE=1, so cargo builds the tarball's own crates
 *    (CARGO_TARGET_DIR points at this checkout's target/ so registry crates are reused, not recompiled).
 * Each step prints its time and the package sizes.
 */

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type LocalRegistry, startLocalRegistry } from './local-registry.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const E2E = process.env.PAGEDLLM_PACKAGING_E2E === '1';
const STEP_TIMEOUT = 900_000;

interface Packed {
  name: string;
  file: string;
  size: number;
  unpackedSize: number;
}

const report = (line: string) => process.stdout.write(`[packaging-e2e] ${line}\n`);
const mb = (n: number) => `${(n / 1e6).toFixed(2)} MB`;

/** The parent's environment without npm's lifecycle variables (they would leak this checkout's config). */
function baseEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k)));
}

/** PATH without any directory that holds cargo or rustc. */
function pathWithoutRust(): string {
  const exe = process.platform === 'win32' ? '.exe' : '';
  return (process.env.PATH ?? '')
    .split(path.delimiter)
    .filter((dir) => dir && !existsSync(path.join(dir, `cargo${exe}`)) && !existsSync(path.join(dir, `rustc${exe}`)))
    .join(path.delimiter);
}

interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
  seconds: number;
}

/** Runs a command to its end without blocking the event loop (a minutes-long spawnSync starves vitest's RPC). */
function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<RunResult> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr, seconds: (performance.now() - t0) / 1000 }));
  });
}

function expectOk(r: RunResult, what: string) {
  expect(r.status, `${what} failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
}

function emptyProject(dir: string) {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: path.basename(dir), private: true, type: 'module' }));
}

describe.skipIf(!E2E)('packaging end to end (local registry)', () => {
  let tmp: string;
  let registry: LocalRegistry;
  let platformPkg: Packed;
  let mainPkg: Packed;
  let userEnv: NodeJS.ProcessEnv;
  const app = () => path.join(tmp, 'app');

  beforeAll(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'pagedllm-e2e-'));
    const pack = async (args: string[]): Promise<Packed> => {
      const r = await run(process.execPath, ['scripts/package/pack.mjs', '--out', path.join(tmp, 'tarballs'), ...args], ROOT, baseEnv());
      expectOk(r, `pack ${args.join(' ')}`);
      return JSON.parse(r.stdout) as Packed;
    };
    platformPkg = await pack(['--platform', 'linux-x64-gnu']);
    mainPkg = await pack(['--main']);
    report(`${platformPkg.name}: ${mb(platformPkg.size)} packed, ${mb(platformPkg.unpackedSize)} unpacked`);
    report(`${mainPkg.name}: ${mb(mainPkg.size)} packed, ${mb(mainPkg.unpackedSize)} unpacked`);
    registry = await startLocalRegistry(path.join(tmp, 'registry'));
    for (const p of [platformPkg, mainPkg]) {
      expectOk(await run('npm', ['publish', p.file, '--registry', registry.url, '--userconfig', registry.npmrc], tmp, baseEnv()), `publish ${p.name}`);
    }
    userEnv = {
      ...baseEnv(),
      PATH: pathWithoutRust(),
      npm_config_userconfig: registry.npmrc,
      npm_config_registry: registry.url,
      npm_config_cache: path.join(tmp, 'npm-cache'),
      npm_config_audit: 'false',
      npm_config_fund: 'false',
    };
  }, STEP_TIMEOUT);

  afterAll(async () => {
    await registry?.stop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('installs from the registry without a Rust toolchain, using the prebuilt package', async () => {
    expect(spawnSync('cargo', ['--version'], { env: userEnv }).error).toBeDefined();
    emptyProject(app());
    const r = await run('npm', ['install', 'pagedllm', '--registry', registry.url], app(), userEnv);
    expectOk(r, 'npm install pagedllm');
    report(`fresh install from the local registry (empty npm cache, model already cached): ${r.seconds.toFixed(1)}s`);
    const modules = path.join(app(), 'node_modules');
    expect(existsSync(path.join(modules, 'pagedllm-linux-x64-gnu', 'pagedllm.linux-x64-gnu.node'))).toBe(true);
    // No source build happened: the package's bindings/ holds sources only.
    expect(readdirSync(path.join(modules, 'pagedllm', 'bindings')).filter((f) => f.endsWith('.node'))).toEqual([]);
  }, STEP_TIMEOUT);

  it('`npx pagedllm generate` answers Paris', async () => {
    const r = await run('npx', ['pagedllm', 'generate', 'The capital of France is', '--max-tokens', '16', '--temperature', '0'], app(), userEnv);
    expectOk(r, 'npx pagedllm generate');
    report(`npx pagedllm generate: ${r.seconds.toFixed(1)}s: ${JSON.stringify(r.stdout.trim())}`);
    expect(r.stdout).toContain('Paris');
  }, STEP_TIMEOUT);

  it('imports from an ESM script and type-checks from TypeScript', async () => {
    writeFileSync(
      path.join(app(), 'main.mjs'),
      [
        "import { LLM, ValidationError } from 'pagedllm';",
        "import { startServer } from 'pagedllm/server';",
        'const llm = await LLM.create({ maxModelLen: 256 });',
        "const [out] = await llm.generate('The capital of France is', { maxTokens: 8, temperature: 0 });",
        'llm.close();',
        "console.log(JSON.stringify({ text: out.outputs[0].text, validation: typeof ValidationError, server: typeof startServer }));",
      ].join('\n'),
    );
    const r = await run(process.execPath, ['main.mjs'], app(), userEnv);
    expectOk(r, 'node main.mjs');
    const line = JSON.parse(r.stdout.trim().split('\n').pop()!) as { text: string; validation: string };
    expect(line.text).toContain('Paris');
    expect(line.validation).toBe('function');

    writeFileSync(
      path.join(app(), 'check.ts'),
      [
        "import { LLM, type RequestOutput, type LLMOptions } from 'pagedllm';",
        'const options: LLMOptions = { maxModelLen: 256 };',
        'const llm: LLM = await LLM.create(options);',
        "const outs: RequestOutput[] = await llm.generate('Hi', { maxTokens: 1 });",
        'const text: string = outs[0]!.outputs[0]!.text;',
        "// @ts-expect-error: maxTokens is a number (fails to compile if the types did not resolve to pagedllm's)",
        "await llm.generate('Hi', { maxTokens: 'many' });",
        'export { text };',
      ].join('\n'),
    );
    writeFileSync(
      path.join(app(), 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          strict: true,
          noEmit: true,
          noUncheckedIndexedAccess: true,
          types: ['node'],
          typeRoots: [path.join(ROOT, 'node_modules', '@types')],
        },
        files: ['check.ts'],
      }),
    );
    const tsc = await run(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], app(), userEnv);
    expectOk(tsc, 'tsc --noEmit');
  }, STEP_TIMEOUT);

  it('builds from the packed tarball alone when no prebuilt package is installed (source fallback)', async () => {
    const dir = path.join(tmp, 'from-source');
    emptyProject(dir);
    const env = {
      ...userEnv,
      PATH: process.env.PATH,
      PAGEDLLM_BUILD_FROM_SOURCE: '1',
      CARGO_TARGET_DIR: process.env.CARGO_TARGET_DIR ?? path.join(ROOT, 'target'),
    };
    const r = await run('npm', ['install', mainPkg.file, '--omit=optional', '--foreground-scripts'], dir, env);
    expectOk(r, 'npm install <tarball> (source build)');
    const compiled = [...(r.stderr + r.stdout).matchAll(/Compiling (\S+) v/g)].map((m) => m[1]);
    report(`install + cargo build from the tarball: ${r.seconds.toFixed(1)}s, compiled ${compiled.length} crates: ${compiled.join(', ')}`);
    expect(r.stderr + r.stdout).toMatch(/building the native core from source \(PAGEDLLM_BUILD_FROM_SOURCE=1/);
    const modules = path.join(dir, 'node_modules');
    expect(existsSync(path.join(modules, 'pagedllm-linux-x64-gnu'))).toBe(false);
    expect(existsSync(path.join(modules, 'pagedllm', 'bindings', 'pagedllm.linux-x64-gnu.node'))).toBe(true);
    const gen = await run('npx', ['pagedllm', 'generate', 'The capital of France is', '--max-tokens', '16', '--temperature', '0'], dir, { ...env, PATH: pathWithoutRust() });
    expectOk(gen, 'npx pagedllm generate (source build)');
    expect(gen.stdout).toContain('Paris');
  }, STEP_TIMEOUT);
});
