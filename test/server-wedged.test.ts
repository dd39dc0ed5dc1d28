/**
 * A wedged backend takes the server down instead of leaving it "healthy" (issue "Hardening", item 5). The real CLI
 * (`pagedllm serve`) runs with the test-only fault switch `PAGEDLLM_TEST_FAIL_STEPS_AFTER=N` (read once by the
 * engine at build: every step after the N-th fails, as a sticky device error would). A stream that was running
 * gets an error chunk, /health turns 503 once the engine has stopped (after `MAX_CONSECUTIVE_STEP_FAILURES` failed
 * steps in a row), and the process exits non-zero so a supervisor restarts it.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { beforeAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = path.join(root, 'dist', 'cli.js');

beforeAll(() => {
  if (!existsSync(cli)) throw new Error('dist/cli.js is missing: run `npm run build:ts` (npm test does)');
});

function startServe(env: Record<string, string>): Promise<{ child: ChildProcess; url: string; output: () => string; exited: Promise<number | null> }> {
  const child = spawn(process.execPath, [cli, 'serve', '--port', '0', '--kv-cache-bytes', String(64 << 20), '--max-model-len', '512'], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = /listening on (http:\/\/[^\s]+)/.exec(out);
      if (m) resolve({ child, url: m[1]!, output: () => out, exited });
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    void exited.then((code) => reject(new Error(`serve exited (${code}) before listening:\n${out}`)));
  });
}

async function sseEvents(res: Response): Promise<string[]> {
  const text = await res.text();
  return text
    .split('\n\n')
    .filter((b) => b.startsWith('data: '))
    .map((b) => b.slice(6));
}

describe('wedged backend', () => {
  it('errors in-flight requests, answers /health 503, and exits non-zero', async () => {
    const { child, url, output, exited } = await startServe({ PAGEDLLM_TEST_FAIL_STEPS_AFTER: '12' });
    try {
      expect(output()).toContain('TEST ONLY');
      expect((await fetch(`${url}/health`)).status).toBe(200);
      // A stream starts fine, then the fault hits: it ends with an OpenAI-shaped error chunk and [DONE].
      const res = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 100, ignore_eos: true, stream: true }),
      });
      expect(res.status).toBe(200);
      const events = await sseEvents(res);
      expect(events.at(-1)).toBe('[DONE]');
      const error = JSON.parse(events.at(-2)!) as { error: { message: string; code: string } };
      expect(error.error.message).toContain('injected backend fault');
      expect(events.length).toBeGreaterThan(3); // some tokens came before the fault

      // Further requests keep failing (the fault is sticky) until the engine gives up and stops.
      let statuses: number[] = [];
      let healthy = true;
      for (let i = 0; i < 10 && healthy; i++) {
        const r = await fetch(`${url}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ prompt: 'Hi', max_tokens: 4 }),
        }).catch(() => null);
        if (r) statuses.push(r.status);
        const h = await fetch(`${url}/health`).catch(() => null);
        healthy = h !== null && h.status === 200;
        if (h) expect([200, 503]).toContain(h.status);
      }
      expect(healthy).toBe(false);
      expect(statuses.every((s) => s >= 500), `statuses ${statuses.join(',')}`).toBe(true);
      // ... and the process exits non-zero within the watchdog's period.
      const code = await Promise.race([exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 10_000))]);
      expect(code).toBe(1);
      expect(output()).toContain('the backend is wedged');
      expect(output()).toContain('the engine stopped unexpectedly');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
