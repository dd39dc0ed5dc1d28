#!/usr/bin/env node
// Soak test of the real server (`node dist/cli.js serve`, a child process, the default model): CONCURRENCY
// clients loop for a bounded time over a mix of normal requests (completions and chat, streamed and not), 25%
// streams aborted by the client after their first chunk, non-streamed requests whose client disconnects while
// waiting, slow readers, and malformed requests. Then it stops the load, checks the engine drained, and sends
// SIGTERM in the middle of a second burst of load. It checks that
// - every request the server accepted (answered with a status line) either completed or got an error (a 4xx/5xx
//   body in OpenAI's shape, or an SSE error chunk): none vanished (a network error without a client abort);
// - after the load, `vllm:kv_cache_usage_perc` and `vllm:num_requests_running` return to 0;
// - RSS of the server after the run is within 10% of RSS after warm-up;
// - on SIGTERM the in-flight requests still finish or get an error, and the process exits 0 (nothing left running).
//
// `runSoak(options)` is what test/soak.test.ts runs for 60 s in `npm test`; run as a script for the long version:
//   node bench/soak.mjs --duration 600 [--concurrency 64] [--out bench/results/soak-<date>.json]
// (build first: `npm run build:ts`). The result is one JSON document: config, counts per kind and outcome, RSS,
// latencies, and the list of failed checks (empty when everything held).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A deterministic generator (LCG), so a run's mix is reproducible from its seed. */
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function rssOf(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : NaN;
}

async function metric(url, name) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name + '{') || l.startsWith(name + ' '));
  return line ? Number(line.split(' ').at(-1)) : NaN;
}

/** Starts `pagedllm serve` on a free port; resolves once it listens. */
export function startServer(args = []) {
  const child = spawn(process.execPath, [path.join(ROOT, 'dist', 'cli.js'), 'serve', '--port', '0', '--disable-log-requests', ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return new Promise((resolve, reject) => {
    const onData = (d) => {
      log += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(log);
      if (m) resolve({ child, url: m[1], exited, log: () => log });
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    exited.then(({ code }) => reject(new Error(`serve exited (${code}) before listening:\n${log}`)));
  });
}

const TOPICS = ['the sea', 'mountains', 'a cat', 'trains', 'the moon', 'bread', 'rain', 'chess'];
const MALFORMED = [
  ['/v1/completions', '{"prompt": '],
  ['/v1/completions', '{"prompt": "x", "temperature": -1}'],
  ['/v1/chat/completions', '{"messages": []}'],
  ['/v1/chat/completions', '{"messages": [{"role": "user", "content": "x"}], "use_beam_search": true, "logprobs": true}'],
  ['/v1/completions', JSON.stringify({ prompt: 'x', stop: Array.from({ length: 40 }, (_, i) => `s${i}`) })],
  ['/v1/completions', '[' .repeat(200)],
  ['/tokenize', '{"messages": [{"role": "user", "content": "x"}], "chat_template": "{{ 1 }}"}'],
];

/** One request of a given kind; returns its outcome. */
async function oneRequest(url, kind, rand) {
  const topic = TOPICS[Math.floor(rand() * TOPICS.length)];
  const chat = rand() < 0.5;
  const maxTokens = 8 + Math.floor(rand() * 24);
  const started = performance.now();
  const outcome = (o) => ({ kind, ms: performance.now() - started, ...o });
  if (kind === 'malformed') {
    const [p, body] = MALFORMED[Math.floor(rand() * MALFORMED.length)];
    try {
      const res = await fetch(url + p, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      const json = await res.json().catch(() => null);
      const shaped = json && json.error && ['message', 'type', 'param', 'code'].every((k) => k in json.error);
      // A 4xx, or the 503 a draining server answers before the engine sees the request (SIGTERM burst; during the load
      // phase checkOutcomes still fails any 5xx), in OpenAI's error shape.
      const refused = (res.status >= 400 && res.status < 500) || res.status === 503;
      return outcome({ accepted: true, status: res.status, result: refused && shaped ? 'error-response' : 'bad' });
    } catch (e) {
      return outcome({ accepted: false, result: 'network-error', error: String(e.cause?.code ?? e) });
    }
  }
  const stream = kind !== 'normal' || rand() < 0.5 ? kind !== 'disconnect' : false;
  const body = chat
    ? { messages: [{ role: 'user', content: `Write about ${topic}.` }], max_tokens: maxTokens, stream, ignore_eos: kind !== 'normal' }
    : { prompt: `A short note about ${topic}:`, max_tokens: maxTokens, stream, ignore_eos: kind !== 'normal' };
  if (kind === 'abort' || kind === 'disconnect') body.max_tokens = 64;
  const controller = new AbortController();
  if (kind === 'disconnect') setTimeout(() => controller.abort(), 30 + rand() * 400);
  let res;
  try {
    res = await fetch(url + (chat ? '/v1/chat/completions' : '/v1/completions'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
  } catch (e) {
    if (controller.signal.aborted) return outcome({ accepted: false, result: 'client-aborted' });
    return outcome({ accepted: false, result: 'network-error', error: String(e.cause?.code ?? e) });
  }
  try {
    if (!stream) {
      const json = await res.json();
      if (res.status !== 200) return outcome({ accepted: true, status: res.status, result: json?.error ? 'error-response' : 'bad' });
      const ok = Array.isArray(json.choices) && json.choices.length === 1 && json.usage?.completion_tokens > 0;
      return outcome({ accepted: true, status: 200, result: ok ? 'completed' : 'bad' });
    }
    if (res.status !== 200) {
      const json = await res.json().catch(() => null);
      return outcome({ accepted: true, status: res.status, result: json?.error ? 'error-response' : 'bad' });
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let text = '';
    let chunks = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
      chunks++;
      if (kind === 'abort' && chunks >= 1 && text.includes('\n\n')) {
        await reader.cancel();
        return outcome({ accepted: true, status: 200, result: 'client-aborted' });
      }
      if (kind === 'slow') await sleep(60 + rand() * 120);
    }
    const events = text.split('\n\n').filter((b) => b.startsWith('data: ')).map((b) => b.slice(6));
    if (events.at(-1) !== '[DONE]') return outcome({ accepted: true, status: 200, result: 'bad', error: 'stream without [DONE]' });
    const errorChunk = events.slice(0, -1).some((e) => e.startsWith('{"error"'));
    return outcome({ accepted: true, status: 200, result: errorChunk ? 'error-response' : 'completed' });
  } catch (e) {
    if (controller.signal.aborted) return outcome({ accepted: true, status: res.status, result: 'client-aborted' });
    return outcome({ accepted: true, status: res.status, result: 'vanished', error: String(e.cause?.code ?? e) });
  }
}

/** The kind of the next request: 25% aborted streams, 10% disconnects, 10% slow readers, 10% malformed, rest normal. */
function pickKind(rand) {
  const x = rand();
  if (x < 0.25) return 'abort';
  if (x < 0.35) return 'disconnect';
  if (x < 0.45) return 'slow';
  if (x < 0.55) return 'malformed';
  return 'normal';
}

async function load(url, { concurrency, until, seed, outcomes }) {
  const workers = Array.from({ length: concurrency }, async (_, w) => {
    const rand = rng(seed * 1000 + w);
    while (Date.now() < until()) outcomes.push(await oneRequest(url, pickKind(rand), rand));
  });
  await Promise.all(workers);
}

function tally(outcomes) {
  const counts = {};
  for (const o of outcomes) {
    counts[o.kind] ??= {};
    counts[o.kind][o.result] = (counts[o.kind][o.result] ?? 0) + 1;
  }
  return counts;
}

/**
 * Runs the soak against a fresh server; resolves with the result document (its `failures` list is empty when
 * every check held).
 */
export async function runSoak({ durationMs = 60_000, concurrency = 64, warmupMs = 8_000, seed = 1, serverArgs = [], log = () => {} } = {}) {
  const server = await startServer(['--max-model-len', '512', '--kv-cache-bytes', String(128 << 20), ...serverArgs]);
  const { url, child } = server;
  const failures = [];
  const outcomes = [];
  try {
    log(`soak: server at ${url} (pid ${child.pid}); warm-up ${warmupMs / 1000}s`);
    const warm = [];
    const warmEnd = Date.now() + warmupMs;
    await load(url, { concurrency, until: () => warmEnd, seed: seed + 7, outcomes: warm });
    await waitDrained(url, 20_000);
    await sleep(500);
    const rssWarm = rssOf(child.pid);
    log(`soak: RSS after warm-up ${(rssWarm / 2 ** 20).toFixed(1)} MiB; load for ${durationMs / 1000}s at concurrency ${concurrency}`);

    const end = Date.now() + durationMs;
    await load(url, { concurrency, until: () => end, seed, outcomes });
    const drained = await waitDrained(url, 30_000);
    if (!drained) failures.push('the engine did not drain after the load (kv_cache_usage_perc or num_requests_running not 0)');
    const kvAfter = await metric(url, 'vllm:kv_cache_usage_perc');
    const runningAfter = await metric(url, 'vllm:num_requests_running');
    await sleep(500);
    const rssAfter = rssOf(child.pid);
    const rssGrowth = (rssAfter - rssWarm) / rssWarm;
    log(`soak: ${outcomes.length} requests; RSS after ${(rssAfter / 2 ** 20).toFixed(1)} MiB (${(rssGrowth * 100).toFixed(1)}%)`);
    if (Math.abs(rssGrowth) > 0.1) failures.push(`RSS after the run is ${(rssGrowth * 100).toFixed(1)}% off RSS after warm-up (limit 10%)`);
    checkOutcomes(outcomes, failures, 'load');

    // SIGTERM in the middle of a burst: in-flight requests finish or get an error; the process exits 0.
    const burst = [];
    let stopBurst = false;
    const burstDone = load(url, { concurrency, until: () => (stopBurst ? 0 : Infinity), seed: seed + 13, outcomes: burst });
    await sleep(2000);
    child.kill('SIGTERM');
    stopBurst = true;
    const exit = await Promise.race([server.exited, sleep(30_000).then(() => 'timeout')]);
    await burstDone;
    if (exit === 'timeout') failures.push('the server did not exit within 30 s of SIGTERM');
    else if (exit.code !== 0) failures.push(`the server exited with ${exit.code ?? exit.signal} after SIGTERM (expected 0)`);
    // Requests refused after SIGTERM never reached the server (connection refused): not accepted, not counted.
    checkOutcomes(burst, failures, 'SIGTERM burst');
    return {
      config: { durationMs, concurrency, warmupMs, seed, serverArgs },
      requests: outcomes.length,
      counts: tally(outcomes),
      sigtermBurst: { requests: burst.length, counts: tally(burst), exit },
      kvCacheUsageAfter: kvAfter,
      runningAfter,
      rss: { afterWarmup: rssWarm, after: rssAfter, growth: rssGrowth },
      latencyMs: latencySummary(outcomes),
      failures,
    };
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

function checkOutcomes(outcomes, failures, phase) {
  const bad = outcomes.filter((o) => o.result === 'bad' || o.result === 'vanished' || (o.result === 'network-error' && phase === 'load'));
  if (bad.length > 0) {
    const sample = bad.slice(0, 5).map((o) => `${o.kind}:${o.result}:${o.status ?? ''}:${o.error ?? ''}`);
    failures.push(`${phase}: ${bad.length} request(s) neither completed nor got an error (${sample.join(', ')})`);
  }
  const unexpected5xx = outcomes.filter((o) => o.status >= 500 && phase === 'load');
  if (unexpected5xx.length > 0) failures.push(`${phase}: ${unexpected5xx.length} 5xx answers`);
}

function latencySummary(outcomes) {
  const done = outcomes.filter((o) => o.result === 'completed').map((o) => o.ms).sort((a, b) => a - b);
  const q = (p) => (done.length ? Math.round(done[Math.min(done.length - 1, Math.floor(p * done.length))]) : null);
  return { completed: done.length, p50: q(0.5), p99: q(0.99) };
}

async function waitDrained(url, timeoutMs) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const [kv, running, waiting] = await Promise.all([
      metric(url, 'vllm:kv_cache_usage_perc'),
      metric(url, 'vllm:num_requests_running'),
      metric(url, 'vllm:num_requests_waiting'),
    ]);
    if (kv === 0 && running === 0 && waiting === 0) return true;
    await sleep(100);
  }
  return false;
}

async function main() {
  const { values } = parseArgs({
    options: {
      duration: { type: 'string', default: '600' },
      concurrency: { type: 'string', default: '64' },
      warmup: { type: 'string', default: '20' },
      seed: { type: 'string', default: '1' },
      out: { type: 'string' },
      'server-arg': { type: 'string', multiple: true },
    },
  });
  const result = await runSoak({
    durationMs: Number(values.duration) * 1000,
    concurrency: Number(values.concurrency),
    warmupMs: Number(values.warmup) * 1000,
    seed: Number(values.seed),
    serverArgs: values['server-arg'] ?? [],
    log: (l) => process.stderr.write(l + '\n'),
  });
  const doc = {
    command: `node bench/soak.mjs ${process.argv.slice(2).join(' ')}`.trim(),
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, memGiB: Math.round(os.totalmem() / 2 ** 30), loadavg: os.loadavg() },
    ...result,
  };
  const out = values.out ?? path.join(ROOT, 'bench', 'results', `soak-${doc.date.slice(0, 10)}.json`);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify(doc, null, 2) + '\n');
  process.stderr.write(`soak: wrote ${out}; ${result.failures.length === 0 ? 'all checks held' : 'FAILED: ' + result.failures.join('; ')}\n`);
  process.exit(result.failures.length === 0 ? 0 : 1);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main();
