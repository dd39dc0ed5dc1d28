/**
 * Connection-level hardening on a real loopback socket (issue "Hardening", items 1, 2 and 7):
 * - a 413 leaves pooled keep-alive clients (the `openai` SDK over Node's fetch/undici, and a node:http keep-alive
 *   agent with one socket) able to send their next request;
 * - a client that disconnects while waiting for a NON-streamed response aborts its engine request: the KV blocks
 *   are freed (`vllm:kv_cache_usage_perc` back to 0) long before the request could have finished;
 * - a large chat-template render runs off the event loop: another request's stream keeps flowing while it runs.
 */

import http from 'node:http';

import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { LLM } from '../src/index.js';
import { type RunningServer, startServer } from '../src/server/serve.js';
import { createTestLLM, waitFor } from './helpers.js';

const BODY_LIMIT = 64 * 1024;
let llm: LLM;
let server: RunningServer;

beforeAll(async () => {
  llm = await createTestLLM();
  server = await startServer({
    llm,
    port: 0,
    disableLogRequests: true,
    log: () => {},
    bodyLimitBytes: BODY_LIMIT,
    trustRequestChatTemplate: true,
  });
});

afterAll(async () => {
  await server?.shutdown();
});

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name + '{') || l.startsWith(name + ' '));
  if (!line) throw new Error(`no metric ${name}`);
  return Number(line.split(' ').at(-1));
}

describe('413 and pooled keep-alive clients', () => {
  it('the openai SDK (fetch/undici pool) interleaves oversized and normal requests', async () => {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const huge = 'x'.repeat(BODY_LIMIT * 4);
    for (let round = 0; round < 4; round++) {
      const err = await client.completions.create({ model: llm.modelInfo.name, prompt: huge, max_tokens: 1 }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err, `round ${round}`).toBeInstanceOf(OpenAI.APIError);
      expect((err as InstanceType<typeof OpenAI.APIError>).status).toBe(413);
      const ok = await client.completions.create({ model: llm.modelInfo.name, prompt: 'Hi', max_tokens: 2, temperature: 0 });
      expect(ok.choices[0]!.text.length).toBeGreaterThan(0);
      const chat = await client.chat.completions.create({ model: llm.modelInfo.name, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 });
      expect(chat.choices[0]!.message.role).toBe('assistant');
    }
  });

  it('a keep-alive node:http agent with a single socket', async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const { port } = server;
    const send = (body: string) =>
      new Promise<{ status: number; connection: string | undefined; body: string }>((resolve, reject) => {
        const req = http.request(
          { host: '127.0.0.1', port, path: '/v1/completions', method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
          (res) => {
            let text = '';
            res.setEncoding('utf8');
            res.on('data', (d: string) => (text += d));
            res.on('end', () => resolve({ status: res.statusCode!, connection: res.headers.connection, body: text }));
          },
        );
        req.on('error', reject);
        req.end(body);
      });
    try {
      for (let round = 0; round < 3; round++) {
        const big = await send(JSON.stringify({ prompt: 'y'.repeat(BODY_LIMIT * 2), max_tokens: 1 }));
        expect(big.status).toBe(413);
        expect(big.connection).toBe('close');
        expect(JSON.parse(big.body)).toMatchObject({ error: { code: 'request_too_large' } });
        const ok = await send(JSON.stringify({ prompt: 'Hi', max_tokens: 1 }));
        expect(ok.status).toBe(200);
      }
    } finally {
      agent.destroy();
    }
  });
});

describe('non-streamed client disconnect', () => {
  it('aborts the engine request and frees its KV blocks', async () => {
    const before = llm.stats();
    const maxTokens = 400;
    const body = JSON.stringify({ prompt: 'Tell me a long story about the sea.', max_tokens: maxTokens, ignore_eos: true, temperature: 0 });
    const req = http.request({
      host: '127.0.0.1',
      port: server.port,
      path: '/v1/completions',
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
    });
    req.on('error', () => {});
    req.end(body);
    // Generating: the request holds KV blocks.
    expect(await waitFor(() => llm.stats().numRunning === 1 && llm.stats().generationTokensTotal > before.generationTokensTotal + 4, 30_000)).toBe(true);
    expect(await metric('vllm:kv_cache_usage_perc')).toBeGreaterThan(0);
    req.destroy();
    // The engine drops it at once: nothing running, no blocks in use, well short of max_tokens.
    expect(await waitFor(() => llm.stats().numRunning === 0 && llm.stats().kvBlocksInUse === 0, 5_000)).toBe(true);
    await new Promise((r) => setTimeout(r, 60)); // /metrics reuses an engine snapshot for 50 ms
    expect(await metric('vllm:kv_cache_usage_perc')).toBe(0);
    expect(llm.stats().generationTokensTotal - before.generationTokensTotal).toBeLessThan(maxTokens);
    expect(server.state.inFlight.size).toBe(0);
  });
});

describe('large renders run off the event loop', () => {
  /** A trusted template that does a lot of work within the fuel limit: repeated passes over a large string. */
  const heavyTemplate = (passes: number) => `{% for i in range(${passes}) %}{{ ((messages[0].content * 8) | upper)[:1] }}{% endfor %}`;
  const bigMessages = [{ role: 'user', content: 'abc '.repeat(12_000) }];

  async function render(passes: number): Promise<{ ms: number; status: number }> {
    const started = performance.now();
    const res = await fetch(`${server.url}/tokenize`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages: bigMessages, chat_template: heavyTemplate(passes) }),
    });
    await res.arrayBuffer();
    return { ms: performance.now() - started, status: res.status };
  }

  it("one big render does not delay another request's stream", async () => {
    // Calibrate: enough passes that the render alone takes about 1.5 s on this machine (at least 0.5 s: range()
    // stops at 100,000 items, so a very fast machine may not reach 1.5 s).
    let passes = 500;
    let alone = await render(passes);
    expect(alone.status).toBe(200);
    while (alone.ms < 1500 && passes < 64_000) {
      passes *= 2;
      alone = await render(passes);
      expect(alone.status).toBe(200);
    }
    expect(alone.ms).toBeGreaterThanOrEqual(500);

    const res = await fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'Count to one hundred:', max_tokens: 450, ignore_eos: true, stream: true }),
    });
    const reader = res.body!.getReader();
    const arrivals: number[] = [];
    let renderStart = 0;
    let renderEnd = 0;
    const reading = (async () => {
      for (;;) {
        const { done } = await reader.read();
        if (done) return;
        arrivals.push(performance.now());
      }
    })();
    expect(await waitFor(() => arrivals.length >= 5, 30_000)).toBe(true);
    renderStart = performance.now();
    const concurrent = await render(passes);
    renderEnd = performance.now();
    expect(concurrent.status).toBe(200);
    await reader.cancel();
    await reading.catch(() => {});

    const during = arrivals.filter((t) => t >= renderStart && t <= renderEnd);
    const points = [renderStart, ...during, renderEnd];
    const maxGap = Math.max(...points.slice(1).map((t, i) => t - points[i]!));
    // With the render on the event loop, the stream would stall for the whole render.
    expect(during.length, `chunks during a ${Math.round(concurrent.ms)} ms render`).toBeGreaterThan(3);
    expect(maxGap, `largest gap between chunks during the render`).toBeLessThan(alone.ms / 2);
  });
});
