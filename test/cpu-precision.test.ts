// The CPU precision mode and thread count as a user sets them: `cpuPrecision` / `numThreads` in `LLM.create`,
// `--cpu-precision` / `--threads` on the CLI, and what `modelInfo` reports (the kernel family and the mode).

import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { beforeAll, describe, expect, it } from 'vitest';

import { LLM, ValidationError } from '../src/index.js';
import { parseServeArgs } from '../src/server/options.js';
import { TEST_ENGINE } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = path.join(root, 'dist', 'cli.js');
const run = promisify(execFile);

beforeAll(async () => {
  if (!existsSync(cli)) await run(process.execPath, [path.join(root, 'scripts', 'build.mjs'), '--ts-only'], { cwd: root });
});

const ISAS = ['avx512-vnni', 'avx-vnni', 'avx2', 'neon-dotprod', 'scalar'];

describe('cpuPrecision', () => {
  it('an unknown mode is a ValidationError naming cpuPrecision', async () => {
    const bad = await LLM.create({ ...TEST_ENGINE, cpuPrecision: 'int4' as 'fast' }).then(() => undefined, (e: unknown) => e);
    expect(bad).toBeInstanceOf(ValidationError);
    expect((bad as ValidationError).param).toBe('cpuPrecision');
    const threads = await LLM.create({ ...TEST_ENGINE, numThreads: 0 }).then(() => undefined, (e: unknown) => e);
    expect((threads as ValidationError).param).toBe('numThreads');
  });

  it('modelInfo reports the mode, the kernels and the threads; both modes generate', async () => {
    const texts: string[] = [];
    const blocks: Record<string, number> = {};
    for (const cpuPrecision of ['exact', 'fast'] as const) {
      const llm = await LLM.create({ ...TEST_ENGINE, cpuPrecision, numThreads: 1 });
      try {
        expect(llm.modelInfo.cpuPrecision).toBe(cpuPrecision);
        blocks[cpuPrecision] = llm.modelInfo.numKvBlocks;
        expect(ISAS).toContain(llm.modelInfo.cpuIsa);
        expect(llm.modelInfo.numThreads).toBe(1);
        const [out] = await llm.generate('The capital of France is', { temperature: 0, maxTokens: 4 });
        const text = out?.outputs[0]?.text ?? '';
        expect(text.length).toBeGreaterThan(0);
        texts.push(text);
      } finally {
        llm.close();
      }
    }
    expect(texts).toHaveLength(2);
    // Fast mode's KV cache is f16: the same byte budget holds twice the blocks (give or take the rounding).
    expect(blocks.fast).toBeGreaterThanOrEqual(2 * blocks.exact!);
    expect(blocks.fast).toBeLessThanOrEqual(2 * blocks.exact! + 1);
  });

  it('the default is fast mode', async () => {
    const llm = await LLM.create(TEST_ENGINE);
    try {
      expect(llm.modelInfo.cpuPrecision).toBe('fast');
      expect(llm.modelInfo.numThreads).toBeGreaterThanOrEqual(1);
    } finally {
      llm.close();
    }
  });
});

describe('CLI flags', () => {
  it('serve: --cpu-precision and --threads reach the engine options; bad values are usage errors', () => {
    const o = parseServeArgs(['--cpu-precision', 'exact', '--threads', '3'], {});
    expect(o?.engine).toMatchObject({ cpuPrecision: 'exact', numThreads: 3 });
    expect(() => parseServeArgs(['--cpu-precision', 'slow'], {})).toThrow(/--cpu-precision must be fast or exact/);
    expect(() => parseServeArgs(['--threads', '0'], {})).toThrow(/--threads must be at least 1/);
  });

  it('generate: a bad --cpu-precision is a usage error; a good one prints the mode and kernels', async () => {
    const bad = await run(process.execPath, [cli, 'generate', 'x', '--cpu-precision', 'slow']).then(
      () => undefined,
      (e: { code?: number; stderr?: string }) => e,
    );
    expect(bad?.code).toBe(2);
    expect(bad?.stderr).toMatch(/--cpu-precision must be fast or exact/);
    const ok = await run(process.execPath, [cli, 'generate', 'Hello', '--max-tokens', '2', '--temperature', '0', '--cpu-precision', 'exact', '--threads', '1', '--max-model-len', '256'], { cwd: root });
    expect(ok.stderr).toMatch(/cpu, [a-z0-9-]+ kernels, exact precision, 1 threads/);
  }, 60_000);
});
