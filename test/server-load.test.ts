// A bounded load test of the real server on a real loopback socket with the real default model: 128 requests at
// concurrency 32 (completions and chat, streaming and not), a quarter of them aborted by the client after their
// first chunk, some malformed. It checks that nothing is answered 5xx, that every malformed request gets a 4xx
// with the OpenAI error shape, that every well-formed request that ran to completion got a complete body (or a
// complete SSE stream ending in [DONE]), and that the engine drains afterwards: /metrics reports no running or
// waiting requests and no KV-cache blocks in use (so client aborts reached the engine).

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type RunningServer, startServer } from '../src/server/serve.js';
import { createTestLLM, rng } from './helpers.js';

const TOTAL = 128;
const CONCURRENCY = 32;
const ABORTED = TOTAL / 4;
const API_KEY = 'sk-load-test';
const MODEL = 'load-test-model';
/** Long enough that an abort which never reached the engine would keep it busy well past the drain deadline. */
const ABORTED_MAX_TOKENS = 200;
const DRAIN_TIMEOUT_MS = 10_000;

type Endpoint = 'completions' | 'chat';

interface WellFormed {
  kind: 'ok' | 'abort';
  endpoint: Endpoint;
  stream: boolean;
  includeUsage: boolean;
  maxTokens: number;
  body: Record<string, unknown>;
}

interface Malformed {
  kind: 'bad';
  name: string;
  endpoint: Endpoint;
  /** The raw request body (a string so that broken JSON can be sent). */
  raw: string;
  auth: boolean;
  expectStatus: number;
}

type LoadRequest = WellFormed | Malformed;

interface Outcome {
  req: LoadRequest;
  status: number;
  /** Set when the fetch itself failed (connection reset, ...) other than by our own abort. */
  networkError?: string;
  contentType?: string;
  json?: unknown;
  /** SSE `data:` payloads in order (the last one should be `[DONE]`). */
  events?: string[];
  abortedAfterFirstChunk?: boolean;
}

const TOPICS = ['the sea', 'mountains', 'a cat', 'trains', 'the moon', 'bread', 'rain', 'chess'];

/** The malformed requests, each with the status the OpenAI/vLLM surface gives it. */
function malformedCases(): Omit<Malformed, 'kind'>[] {
  const ok = (extra: Record<string, unknown>) => JSON.stringify({ model: MODEL, max_tokens: 8, ...extra });
  return [
    { name: 'bad JSON', endpoint: 'completions', raw: '{"model": "' + MODEL + '", "prompt": ', auth: true, expectStatus: 400 },
    { name: 'bad JSON (chat)', endpoint: 'chat', raw: '{"messages": [{"role": "user",', auth: true, expectStatus: 400 },
    { name: 'missing prompt', endpoint: 'completions', raw: ok({}), auth: true, expectStatus: 400 },
    { name: 'missing messages', endpoint: 'chat', raw: ok({}), auth: true, expectStatus: 400 },
    { name: 'temperature -1', endpoint: 'completions', raw: ok({ prompt: 'Hi', temperature: -1 }), auth: true, expectStatus: 400 },
    {
      name: 'temperature -1 (chat, stream)',
      endpoint: 'chat',
      raw: ok({ messages: [{ role: 'user', content: 'Hi' }], temperature: -1, stream: true }),
      auth: true,
      expectStatus: 400,
    },
    { name: 'unknown model', endpoint: 'completions', raw: JSON.stringify({ model: 'no-such-model', prompt: 'Hi' }), auth: true, expectStatus: 404 },
    {
      name: 'unknown model (chat, stream)',
      endpoint: 'chat',
      raw: JSON.stringify({ model: 'no-such-model', messages: [{ role: 'user', content: 'Hi' }], stream: true }),
      auth: true,
      expectStatus: 404,
    },
    { name: 'token id out of vocabulary', endpoint: 'completions', raw: ok({ prompt: [1, 2, 10_000_000] }), auth: true, expectStatus: 400 },
    { name: 'negative token id (stream)', endpoint: 'completions', raw: ok({ prompt: [1, -5], stream: true }), auth: true, expectStatus: 400 },
    { name: 'max_tokens beyond context', endpoint: 'completions', raw: ok({ prompt: 'Hi', max_tokens: 1_000_000 }), auth: true, expectStatus: 400 },
    {
      name: 'max_tokens beyond context (chat, stream)',
      endpoint: 'chat',
      raw: ok({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: 1_000_000, stream: true }),
      auth: true,
      expectStatus: 400,
    },
    { name: 'messages not an array', endpoint: 'chat', raw: ok({ messages: 'hello' }), auth: true, expectStatus: 400 },
    { name: 'no API key', endpoint: 'completions', raw: ok({ prompt: 'Hi' }), auth: false, expectStatus: 401 },
  ];
}

function wellFormed(kind: 'ok' | 'abort', endpoint: Endpoint, stream: boolean, next: () => number, i: number): WellFormed {
  const topic = TOPICS[i % TOPICS.length]!;
  const maxTokens = kind === 'abort' ? ABORTED_MAX_TOKENS : 8 + Math.floor(next() * 9);
  const body: Record<string, unknown> = { model: MODEL, max_tokens: maxTokens, temperature: next() < 0.5 ? 0 : 0.8, seed: i };
  if (endpoint === 'completions') body.prompt = `Request ${i}: a short note about ${topic}.`;
  else body.messages = [{ role: 'user', content: `Request ${i}: say something about ${topic}.` }];
  // Aborted requests must still be generating when the client goes away.
  if (kind === 'abort') body.ignore_eos = true;
  const includeUsage = stream && next() < 0.5;
  if (stream) body.stream = true;
  if (includeUsage) body.stream_options = { include_usage: true };
  return { kind, endpoint, stream, includeUsage, maxTokens, body };
}

/** The request mix, shuffled with a fixed seed so aborts and errors land among running requests. */
function buildRequests(): LoadRequest[] {
  const next = rng(20240613);
  const reqs: LoadRequest[] = [];
  for (let i = 0; i < ABORTED; i++) reqs.push(wellFormed('abort', i % 2 === 0 ? 'completions' : 'chat', true, next, i));
  const bad = malformedCases();
  const numBad = bad.length * 2;
  for (let i = 0; i < numBad; i++) reqs.push({ kind: 'bad', ...bad[i % bad.length]! });
  for (let i = reqs.length; i < TOTAL; i++) {
    reqs.push(wellFormed('ok', i % 2 === 0 ? 'completions' : 'chat', i % 3 !== 0, next, i));
  }
  for (let i = reqs.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [reqs[i], reqs[j]] = [reqs[j]!, reqs[i]!];
  }
  return reqs;
}

/** Runs `worker` over `items` with at most `limit` in flight; results keep the items' order. */
async function runPool<T, R>(items: T[], limit: number, worker: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await worker(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  return results;
}

/** Splits an SSE byte stream into `data:` payloads; `onEvent` may return true to stop reading. */
async function readSse(body: ReadableStream<Uint8Array>, onEvent: (data: string) => boolean | void): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end: number;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
      const data = block
        .split(/\r?\n/)
        .filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(5).replace(/^ /, ''))
        .join('\n');
      if (data !== '' && onEvent(data) === true) {
        await reader.cancel().catch(() => undefined);
        return;
      }
    }
  }
  if (buffer.trim() !== '') throw new Error(`stream ended inside an event: ${JSON.stringify(buffer)}`);
}

let server: RunningServer;
let baseUrl: string;

function endpointUrl(endpoint: Endpoint): string {
  return `${baseUrl}/v1/${endpoint === 'chat' ? 'chat/completions' : 'completions'}`;
}

async function send(req: LoadRequest): Promise<Outcome> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  const auth = req.kind === 'bad' ? req.auth : true;
  if (auth) headers.authorization = `Bearer ${API_KEY}`;
  const raw = req.kind === 'bad' ? req.raw : JSON.stringify(req.body);
  const controller = new AbortController();
  let res: Response;
  try {
    res = await fetch(endpointUrl(req.endpoint), { method: 'POST', headers, body: raw, signal: controller.signal });
  } catch (err) {
    return { req, status: -1, networkError: String(err) };
  }
  const out: Outcome = { req, status: res.status, contentType: res.headers.get('content-type') ?? '' };
  const isSse = out.contentType!.includes('text/event-stream');
  try {
    if (!isSse) {
      const text = await res.text();
      try {
        out.json = JSON.parse(text);
      } catch {
        out.json = { unparsable: text };
      }
      return out;
    }
    out.events = [];
    await readSse(res.body!, (data) => {
      out.events!.push(data);
      if (req.kind === 'abort') {
        controller.abort();
        out.abortedAfterFirstChunk = true;
        return true;
      }
      return false;
    });
  } catch (err) {
    if (!(req.kind === 'abort' && controller.signal.aborted)) out.networkError = String(err);
  }
  return out;
}

function expectOpenAIError(o: Outcome): void {
  expect(o.contentType, o.req.kind === 'bad' ? o.req.name : '').toContain('application/json');
  const body = o.json as { error?: Record<string, unknown> };
  expect(body.error, JSON.stringify(body)).toBeTypeOf('object');
  const e = body.error!;
  expect(typeof e.message === 'string' && e.message.length > 0).toBe(true);
  expect(e.type).toBeTypeOf('string');
  expect(e).toHaveProperty('param');
  expect(e).toHaveProperty('code');
  expect(e.param === null || typeof e.param === 'string').toBe(true);
  expect(e.code === null || typeof e.code === 'string').toBe(true);
}

type Choice = { index: number; text?: string; message?: { role: string; content: string }; finish_reason: string | null };

function expectCompleteBody(o: Outcome, req: WellFormed): void {
  const body = o.json as { object: string; id: string; choices: Choice[]; usage: Record<string, number> };
  expect(body.object).toBe(req.endpoint === 'chat' ? 'chat.completion' : 'text_completion');
  expect(body.id).toBeTypeOf('string');
  expect(body.choices).toHaveLength(1);
  const choice = body.choices[0]!;
  if (req.endpoint === 'chat') {
    expect(choice.message?.role).toBe('assistant');
    expect(choice.message?.content).toBeTypeOf('string');
  } else {
    expect(choice.text).toBeTypeOf('string');
  }
  expect(['stop', 'length']).toContain(choice.finish_reason);
  const used = body.usage.completion_tokens!;
  expect(used).toBeGreaterThanOrEqual(1);
  expect(used).toBeLessThanOrEqual(req.maxTokens);
  if (choice.finish_reason === 'length') expect(used).toBe(req.maxTokens);
  expect(body.usage.prompt_tokens).toBeGreaterThan(0);
  expect(body.usage.total_tokens).toBe(body.usage.prompt_tokens! + used);
}

function expectCompleteStream(o: Outcome, req: WellFormed): void {
  const events = o.events!;
  expect(events.at(-1)).toBe('[DONE]');
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e) as { id: string; object: string; choices: unknown[]; usage?: Record<string, number> | null });
  expect(chunks.length).toBeGreaterThan(0);
  const ids = new Set(chunks.map((c) => c.id));
  expect(ids.size).toBe(1);
  for (const c of chunks) expect(c.object).toBe(req.endpoint === 'chat' ? 'chat.completion.chunk' : 'text_completion');
  const withChoices = chunks.filter((c) => c.choices.length > 0) as unknown as { choices: (Choice & { delta?: { role?: string } })[] }[];
  if (req.endpoint === 'chat') expect(withChoices[0]!.choices[0]!.delta?.role).toBe('assistant');
  const finishes = withChoices.flatMap((c) => c.choices.filter((ch) => ch.finish_reason !== null && ch.finish_reason !== undefined));
  expect(finishes).toHaveLength(1);
  expect(['stop', 'length']).toContain(finishes[0]!.finish_reason);
  if (req.includeUsage) {
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage!.completion_tokens).toBeGreaterThanOrEqual(1);
    expect(last.usage!.completion_tokens).toBeLessThanOrEqual(req.maxTokens);
  }
}

/** Samples from /metrics by metric name (first sample carrying our model_name label and `extraLabel`). */
async function scrape(names: string[], extraLabel = ''): Promise<Record<string, number>> {
  const text = await (await fetch(`${baseUrl}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const name of names) {
    const line = text
      .split('\n')
      .find((l) => l.startsWith(name + '{') && l.includes(`model_name="${MODEL}"`) && l.includes(extraLabel));
    if (line === undefined) throw new Error(`/metrics has no ${name}{model_name="${MODEL}"${extraLabel}} sample`);
    out[name] = Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return out;
}

/** The three gauges that must be back at zero once the load is over. */
const drainGauges = () => scrape(['vllm:num_requests_running', 'vllm:num_requests_waiting', 'vllm:kv_cache_usage_perc']);

beforeAll(async () => {
  // The real listener (startServer) on a free loopback port, with the tests' small-footprint engine.
  server = await startServer({
    llm: await createTestLLM(),
    host: '127.0.0.1',
    port: 0,
    apiKey: API_KEY,
    servedModelName: [MODEL],
    disableLogRequests: true,
    log: () => undefined,
  });
  baseUrl = server.url;
});

afterAll(async () => {
  await server?.shutdown('test done');
});

describe('server under load (loopback, real model)', () => {
  it('answers 128 mixed requests at concurrency 32 without a 5xx and drains afterwards', async () => {
    const requests = buildRequests();
    expect(requests).toHaveLength(TOTAL);

    // Sample the gauges while the load runs, so the final zeros are known to come from live gauges.
    let peakRunning = 0;
    let peakKv = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const g = await drainGauges();
        peakRunning = Math.max(peakRunning, g['vllm:num_requests_running']!);
        peakKv = Math.max(peakKv, g['vllm:kv_cache_usage_perc']!);
        await new Promise((r) => setTimeout(r, 250));
      }
    })();
    const started = Date.now();
    const outcomes = await runPool(requests, CONCURRENCY, send);
    sampling = false;
    await sampler;
    const elapsed = (Date.now() - started) / 1000;

    const serverErrors = outcomes.filter((o) => o.status >= 500);
    expect(serverErrors.map((o) => `${o.status} ${JSON.stringify(o.json ?? o.events?.slice(0, 2))}`)).toEqual([]);
    const broken = outcomes.filter((o) => o.networkError !== undefined);
    expect(broken.map((o) => `${o.req.kind}: ${o.networkError}`)).toEqual([]);

    for (const o of outcomes) {
      const req = o.req;
      if (req.kind === 'bad') {
        expect(o.status, req.name).toBe(req.expectStatus);
        expectOpenAIError(o);
      } else if (req.kind === 'abort') {
        expect(o.status).toBe(200);
        expect(o.abortedAfterFirstChunk).toBe(true);
      } else {
        expect(o.status, JSON.stringify(o.json ?? o.events?.slice(0, 2))).toBe(200);
        if (req.stream) expectCompleteStream(o, req);
        else expectCompleteBody(o, req);
      }
    }
    const counts = { ok: 0, abort: 0, bad: 0 };
    for (const r of requests) counts[r.kind]++;
    expect(counts.abort).toBe(ABORTED);
    expect(counts.bad).toBeGreaterThanOrEqual(16);
    expect(peakRunning).toBeGreaterThan(0);
    expect(peakKv).toBeGreaterThan(0);

    // The engine must drain: aborted streams freed their sequences and KV blocks.
    const deadline = Date.now() + DRAIN_TIMEOUT_MS;
    let gauges = await drainGauges();
    while (Date.now() < deadline && Object.values(gauges).some((v) => v !== 0)) {
      await new Promise((r) => setTimeout(r, 200));
      gauges = await drainGauges();
    }
    expect(gauges).toEqual({
      'vllm:num_requests_running': 0,
      'vllm:num_requests_waiting': 0,
      'vllm:kv_cache_usage_perc': 0,
    });

    // Aborts stopped generation: had the aborted streams run on, they alone would have produced 32 x 200 tokens.
    const generated = (await scrape(['vllm:generation_tokens_total']))['vllm:generation_tokens_total']!;
    const aborts = (await scrape(['vllm:request_success_total'], 'finished_reason="abort"'))['vllm:request_success_total']!;
    console.log(`generation tokens ${generated}, aborted requests counted ${aborts}`);
    expect(generated).toBeLessThan((ABORTED * ABORTED_MAX_TOKENS) / 4);
    expect(aborts).toBeGreaterThanOrEqual(ABORTED);

    // Still serving after all that.
    const after = await send(wellFormed('ok', 'completions', false, rng(1), 999));
    expect(after.status).toBe(200);
    expectCompleteBody(after, after.req as WellFormed);
    console.log(`load: ${TOTAL} requests (${counts.ok} ok, ${counts.abort} aborted, ${counts.bad} malformed) in ${elapsed.toFixed(1)} s; peak running ${peakRunning}`);
  });
});
