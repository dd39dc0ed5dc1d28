// The `pagedllm` CLI as a user runs it (`node dist/cli.js`; `npm test` compiles dist first).

import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { beforeAll, describe, expect, it } from 'vitest';

import { LLM, type RequestOutput } from '../src/index.js';
import { hasCuda, loadNative } from '../src/native.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = path.join(root, 'dist', 'cli.js');
const run = promisify(execFile);

async function pagedllm(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [cli, ...args], { cwd: root, maxBuffer: 16 << 20 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

beforeAll(async () => {
  if (!existsSync(cli)) await run(process.execPath, [path.join(root, 'scripts', 'build.mjs'), '--ts-only'], { cwd: root });
});

describe('pagedllm CLI', () => {
  it('generate --json prints the RequestOutput, same as the API under greedy', async () => {
    const prompt = 'The capital of France is';
    const r = await pagedllm(['generate', prompt, '--max-tokens', '8', '--temperature', '0', '--json']);
    expect(r.stderr).toMatch(/loading SmolLM2-135M-Instruct \.\.\. done in \d+\.\ds/);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as RequestOutput;
    expect(out.finished).toBe(true);
    expect(out.prompt).toBe(prompt);
    expect(out.outputs).toHaveLength(1);
    expect(out.outputs[0]!.tokenIds.length).toBeGreaterThan(0);
    expect(out.outputs[0]!.tokenIds.length).toBeLessThanOrEqual(8);

    const llm = await LLM.create({ kvCacheBytes: 64 << 20 });
    try {
      const [api] = await llm.generate(prompt, { maxTokens: 8, temperature: 0 });
      expect(out.outputs[0]!.text).toBe(api!.outputs[0]!.text);
    } finally {
      llm.close();
    }
  });

  it('streams plain text by default and reads the prompt from stdin', async () => {
    const child = execFile(process.execPath, [cli, 'generate', '--max-tokens', '4', '--temperature', '0', '--quiet']);
    child.stdin!.end('The capital of France is\n');
    let stdout = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? -1)));
    expect(code).toBe(0);
    expect(stdout.trim().length).toBeGreaterThan(0);
  });

  it('usage errors exit 2, engine errors exit 1, both as "error: ..."', async () => {
    const badFlag = await pagedllm(['generate', 'x', '--temperature', 'hot']);
    expect(badFlag.code).toBe(2);
    expect(badFlag.stderr).toContain("error: --temperature expects a number, got 'hot'");
    const badValue = await pagedllm(['generate', 'x', '--top-p', '0', '--quiet']);
    expect(badValue.code).toBe(2);
    expect(badValue.stderr).toMatch(/^error: .*topP/m);
    const unknown = await pagedllm(['frobnicate']);
    expect(unknown.code).toBe(2);
    const missing = await pagedllm(['generate', 'x', '--model', '/nonexistent/model.gguf', '--quiet']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^error: .*\/nonexistent\/model\.gguf/m);
  });

  it('generate --device: a bad value is a usage error; cuda without the CUDA addon names the package', async () => {
    const bad = await pagedllm(['generate', 'x', '--device', 'tpu', '--quiet']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/^error: .*device.*must be cpu, cuda or cuda:N/m);
    if (hasCuda(loadNative())) return; // a CUDA build here: the engine would try the GPU instead
    const cuda = await pagedllm(['generate', 'x', '--device', 'cuda', '--quiet']);
    expect(cuda.code).toBe(1);
    expect(cuda.stderr).toMatch(/^error: CUDA is not available: .*install `pagedllm-[a-z0-9-]+-cuda`/m);
  });
});
