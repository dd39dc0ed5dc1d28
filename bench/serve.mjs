#!/usr/bin/env node
// `pagedllm bench serve`-style online benchmark (vLLM's `benchmarks/benchmark_serving.py`, random dataset) against
// an OpenAI-compatible server: streaming /v1/completions with fixed-length random token-id prompts and a fixed
// output length (ignore_eos), sent at several request rates with Poisson arrivals (fixed seed) and once all at
// once. Reports TTFT / TPOT / ITL / end-to-end latency (mean, p50, p99) and request and output-token throughput.
//
// It also measures what the HTTP layer costs: the same workload through HTTP+JSON+SSE and through the TS API
// in-process (`LLM.stream` from dist/index.js), alternating, one request at a time and in concurrent bursts,
// reported as per-token overhead (difference in e2e time / output tokens) and the ITL / TTFT differences.
//
// The server is started from dist/ on a free port (`node dist/cli.js serve --port 0`) unless --base-url is given.
// Results go to bench/results/serve-<date>.json (or --out) as one JSON document: machine, load, command, date,
// config, per-rate results and the overhead comparison. Build first: `npm run build:ts`.

import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

const USAGE = `usage: node bench/serve.mjs [options]

  --base-url URL             benchmark a running server (default: start dist/cli.js serve --port 0)
  --api-key KEY              sent as Authorization: Bearer KEY
  --model NAME               model name to send (default: the first of GET /v1/models)
  --server-arg ARG           extra flag for the started server (repeatable), e.g. --server-arg=--max-num-seqs=64
  --rates LIST               request rates in req/s, 'inf' = all at once (default 1,4,16,inf)
  --num-requests N           requests per rate at most (default 64); a rate r sends min(N, max(16, 8r))
  --max-concurrency N        at most N requests in flight at once (vLLM bench's flag; default unbounded);
                             --rates inf --max-concurrency 1 measures one stream at a time
  --input-len N              prompt tokens (random ids, default 128)
  --output-len N             output tokens (ignore_eos, default 64)
  --vocab-limit N            prompt ids are drawn from [100, N) (default 32000)
  --seed N                   seed for prompts and arrival times (default 0)
  --overhead-sequential N    requests sent one at a time for the overhead comparison (default 6; 0 = skip)
  --overhead-burst N         requests sent at once for the overhead comparison (default 8; 0 = skip)
  --overhead-rounds N        bursts of each kind, alternating (default 2)
  --out FILE                 where the JSON goes (default bench/results/serve-<date>.json)
  --note TEXT                recorded in the JSON (e.g. what else ran on the machine)
  -h, --help`;

function parseCli(argv) {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      'base-url': { type: 'string' },
      'api-key': { type: 'string' },
      model: { type: 'string' },
      'server-arg': { type: 'string', multiple: true },
      rates: { type: 'string', default: '1,4,16,inf' },
      'num-requests': { type: 'string', default: '64' },
      'max-concurrency': { type: 'string' },
      'input-len': { type: 'string', default: '128' },
      'output-len': { type: 'string', default: '64' },
      'vocab-limit': { type: 'string', default: '32000' },
      seed: { type: 'string', default: '0' },
      'overhead-sequential': { type: 'string', default: '6' },
      'overhead-burst': { type: 'string', default: '8' },
      'overhead-rounds': { type: 'string', default: '2' },
      out: { type: 'string' },
      note: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    process.exit(0);
  }
  const int = (name) => {
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} expects a non-negative integer, got '${values[name]}'`);
    return n;
  };
  const rates = values.rates.split(',').map((r) => {
    const n = r === 'inf' ? Infinity : Number(r);
    if (!(n > 0)) throw new Error(`--rates: '${r}' is not a positive number or 'inf'`);
    return n;
  });
  return {
    baseUrl: values['base-url']?.replace(/\/+$/, '') ?? null,
    apiKey: values['api-key'] ?? null,
    model: values.model ?? null,
    serverArgs: values['server-arg'] ?? [],
    rates,
    numRequests: int('num-requests'),
    maxConcurrency: values['max-concurrency'] === undefined ? Infinity : Math.max(1, int('max-concurrency')),
    inputLen: int('input-len'),
    outputLen: int('output-len'),
    vocabLimit: int('vocab-limit'),
    seed: int('seed'),
    overheadSequential: int('overhead-sequential'),
    overheadBurst: int('overhead-burst'),
    overheadRounds: Math.max(1, int('overhead-rounds')),
    out: values.out ?? null,
    note: values.note ?? null,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Workload

/** mulberry32: a small seeded PRNG, so prompts and arrival times are the same on every run. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

function randomPrompts(count, len, vocabLimit, seed) {
  const next = prng(seed);
  return Array.from({ length: count }, () => Array.from({ length: len }, () => 100 + Math.floor(next() * (vocabLimit - 100))));
}

/** Send offsets in seconds: exponential gaps (a Poisson process) at `rate`, or all zero for rate = Infinity. */
function arrivalOffsets(count, rate, seed) {
  if (rate === Infinity) return new Array(count).fill(0);
  const next = prng(seed ^ 0x9e3779b9);
  let t = 0;
  return Array.from({ length: count }, (_, i) => {
    if (i > 0) t += -Math.log(1 - next()) / rate;
    return t;
  });
}

function requestsForRate(rate, cap) {
  return rate === Infinity ? cap : Math.min(cap, Math.max(16, Math.round(8 * rate)));
}

// ---------------------------------------------------------------------------------------------------------------
// Statistics

/** Linear-interpolated percentile (numpy's default), p in [0, 100]. */
function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const pos = ((sorted.length - 1) * p) / 100;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** mean / p50 / p99 in milliseconds of a list of seconds. */
function summarize(seconds) {
  const ms = seconds.map((s) => s * 1000).sort((a, b) => a - b);
  const round = (x) => (x === null ? null : Math.round(x * 1000) / 1000);
  const mean = ms.length ? ms.reduce((s, x) => s + x, 0) / ms.length : null;
  return { mean_ms: round(mean), p50_ms: round(percentile(ms, 50)), p99_ms: round(percentile(ms, 99)), count: ms.length };
}

/** Aggregates per-request records { ok, start, firstToken, end, tokens, chunkTimes, error }. */
function aggregate(records, wallSeconds) {
  const ok = records.filter((r) => r.ok);
  const outputTokens = ok.reduce((s, r) => s + r.tokens, 0);
  const itl = ok.flatMap((r) => r.chunkTimes.slice(1).map((t, i) => t - r.chunkTimes[i]));
  return {
    completed: ok.length,
    failed: records.length - ok.length,
    errors: [...new Set(records.filter((r) => !r.ok).map((r) => r.error))].slice(0, 5),
    duration_s: round3(wallSeconds),
    request_throughput_per_s: round3(ok.length / wallSeconds),
    output_throughput_tok_per_s: round3(outputTokens / wallSeconds),
    total_output_tokens: outputTokens,
    ttft: summarize(ok.map((r) => r.firstToken - r.start)),
    tpot: summarize(ok.filter((r) => r.tokens > 1).map((r) => (r.end - r.firstToken) / (r.tokens - 1))),
    itl: summarize(itl),
    e2e: summarize(ok.map((r) => r.end - r.start)),
  };
}

function round3(x) {
  return Math.round(x * 1000) / 1000;
}

// ---------------------------------------------------------------------------------------------------------------
// Clients: HTTP+SSE and the in-process TS API. Both return the same per-request record; times are in seconds.

const now = () => performance.now() / 1000;

async function* sseEvents(body) {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const bytes of body) {
    buffer += decoder.decode(bytes, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart())
        .join('\n');
      if (data) yield data;
    }
  }
}

function httpClient(baseUrl, apiKey, model, outputLen) {
  const headers = { 'content-type': 'application/json' };
  if (apiKey) headers.authorization = `Bearer ${apiKey}`;
  return async function send(prompt) {
    const body = JSON.stringify({
      model,
      prompt,
      max_tokens: outputLen,
      ignore_eos: true,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    const rec = { ok: false, start: now(), firstToken: null, end: null, tokens: 0, chunkTimes: [], error: null };
    try {
      const res = await fetch(`${baseUrl}/v1/completions`, { method: 'POST', headers, body });
      if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`);
      let done = false;
      for await (const data of sseEvents(res.body)) {
        const t = now();
        if (data === '[DONE]') {
          done = true;
          break;
        }
        const chunk = JSON.parse(data);
        if (chunk.choices?.length > 0) {
          rec.firstToken ??= t;
          rec.chunkTimes.push(t);
        }
        if (chunk.usage) rec.tokens = chunk.usage.completion_tokens;
      }
      rec.end = now();
      if (!done) throw new Error('stream ended without [DONE]');
      if (rec.firstToken === null) throw new Error('no tokens streamed');
      rec.ok = true;
    } catch (err) {
      rec.error = err instanceof Error ? err.message : String(err);
    }
    return rec;
  };
}

function directClient(llm, outputLen) {
  return async function send(prompt) {
    const rec = { ok: false, start: now(), firstToken: null, end: null, tokens: 0, chunkTimes: [], error: null };
    try {
      for await (const delta of llm.stream(prompt, { maxTokens: outputLen, ignoreEos: true, temperature: 0 })) {
        const t = now();
        rec.firstToken ??= t;
        rec.chunkTimes.push(t);
        rec.tokens += delta.tokenIds.length;
      }
      rec.end = now();
      rec.ok = true;
    } catch (err) {
      rec.error = err instanceof Error ? err.message : String(err);
    }
    return rec;
  };
}

/**
 * Open-loop run: request i is sent at offsets[i] seconds after the start, whatever the others are doing, except
 * that at most `maxConcurrency` are in flight (a later one waits for a slot, as in vLLM's bench).
 */
async function runOpenLoop(send, prompts, offsets, maxConcurrency = Infinity) {
  const t0 = now();
  let inFlight = 0;
  const slotWaiters = [];
  const acquire = async () => {
    while (inFlight >= maxConcurrency) await new Promise((r) => slotWaiters.push(r));
    inFlight++;
  };
  const release = () => {
    inFlight--;
    slotWaiters.shift()?.();
  };
  const records = await Promise.all(
    prompts.map(async (p, i) => {
      const wait = t0 + offsets[i] - now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait * 1000));
      await acquire();
      try {
        return await send(p);
      } finally {
        release();
      }
    }),
  );
  return aggregate(records, now() - t0);
}

async function warmUp(send, vocabLimit) {
  const prompts = randomPrompts(2, 16, vocabLimit, 4242);
  for (const p of prompts) {
    const r = await send(p);
    if (!r.ok) throw new Error(`warm-up request failed: ${r.error}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Server process

async function startServer(serverArgs) {
  const cli = path.join(ROOT, 'dist', 'cli.js');
  if (!fs.existsSync(cli)) throw new Error(`${cli} not found: run \`npm run build:ts\` first`);
  const args = [cli, 'serve', '--host', '127.0.0.1', '--port', '0', '--disable-log-requests', ...serverArgs];
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const log = [];
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not print 'listening on' within 120 s:\n${log.join('\n')}`)), 120_000);
    const onLine = (line) => {
      log.push(line);
      const m = /listening on (http:\/\/\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(m[1].replace(/\/+$/, ''));
      }
    };
    for (const stream of [child.stdout, child.stderr]) {
      let buf = '';
      stream.setEncoding('utf8');
      stream.on('data', (d) => {
        buf += d;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          onLine(buf.slice(0, i));
          buf = buf.slice(i + 1);
        }
      });
    }
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code ?? signal}) before listening:\n${log.join('\n')}`));
    });
  });
  const stop = () =>
    new Promise((resolve) => {
      if (child.exitCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 15_000).unref();
    });
  return { url, log, stop, command: [process.execPath, ...args].join(' ') };
}

function machine() {
  const cpus = os.cpus();
  let uptime = null;
  try {
    uptime = execFileSync('uptime', { encoding: 'utf8' }).trim();
  } catch {
    // not available everywhere
  }
  return {
    cpu: cpus[0]?.model ?? 'unknown',
    cores: cpus.length,
    memory_gib: round3(os.totalmem() / 2 ** 30),
    os: `${os.type()} ${os.release()}`,
    arch: os.arch(),
    node: process.version,
    loadavg: os.loadavg().map(round3),
    uptime,
  };
}

function log(line) {
  process.stderr.write(line + '\n');
}

function brief(name, r) {
  const f = (s) => `${s.p50_ms?.toFixed(1)}/${s.p99_ms?.toFixed(1)}`;
  log(
    `${name.padEnd(22)} ${String(r.completed).padStart(3)} ok ${String(r.failed).padStart(2)} failed  ` +
      `${r.request_throughput_per_s.toFixed(2)} req/s ${r.output_throughput_tok_per_s.toFixed(1)} tok/s  ` +
      `ttft ${f(r.ttft)}  tpot ${f(r.tpot)}  itl ${f(r.itl)}  e2e ${f(r.e2e)} ms (p50/p99)`,
  );
}

/** HTTP minus direct: e2e difference per output token, and the ITL / TTFT differences (means and p50s). */
function overheadOf(http, direct) {
  const d = (a, b) => (a === null || b === null ? null : round3(a - b));
  const tokensPerRequest = http.total_output_tokens / Math.max(1, http.completed);
  return {
    per_token_overhead_ms: d(http.e2e.mean_ms / tokensPerRequest, direct.e2e.mean_ms / tokensPerRequest),
    output_tokens_per_request: round3(tokensPerRequest),
    e2e_mean_diff_ms: d(http.e2e.mean_ms, direct.e2e.mean_ms),
    itl_mean_diff_ms: d(http.itl.mean_ms, direct.itl.mean_ms),
    itl_p50_diff_ms: d(http.itl.p50_ms, direct.itl.p50_ms),
    ttft_mean_diff_ms: d(http.ttft.mean_ms, direct.ttft.mean_ms),
    output_throughput_ratio: round3(http.output_throughput_tok_per_s / direct.output_throughput_tok_per_s),
  };
}

async function main() {
  const cfg = parseCli(process.argv.slice(2));
  const started = new Date();
  const machineBefore = machine();
  log(`machine: ${machineBefore.cpu} x${machineBefore.cores}; ${machineBefore.uptime ?? ''}`);

  let server = null;
  let baseUrl = cfg.baseUrl;
  if (!baseUrl) {
    server = await startServer(cfg.serverArgs);
    baseUrl = server.url;
    log(`started server at ${baseUrl}`);
  }
  const authHeaders = cfg.apiKey ? { authorization: `Bearer ${cfg.apiKey}` } : {};
  const models = await (await fetch(`${baseUrl}/v1/models`, { headers: authHeaders })).json();
  const model = cfg.model ?? models.data?.[0]?.id;
  if (!model) throw new Error(`GET /v1/models named no model: ${JSON.stringify(models)}`);
  const http = httpClient(baseUrl, cfg.apiKey, model, cfg.outputLen);

  const doc = {
    benchmark: 'serve',
    date: started.toISOString(),
    command: ['node', path.relative(process.cwd(), process.argv[1]), ...process.argv.slice(2)].join(' '),
    cwd: process.cwd(),
    machine: machineBefore,
    note: cfg.note,
    server: server
      ? { started_by_bench: true, command: server.command, base_url: baseUrl, startup_log: [...server.log] }
      : { started_by_bench: false, base_url: baseUrl },
    model: { served_name: model, listing: models.data?.[0] ?? null },
    config: {
      endpoint: '/v1/completions (stream: true, stream_options.include_usage)',
      prompt: `${cfg.inputLen} random token ids from [100, ${cfg.vocabLimit}) per request, seed ${cfg.seed}`,
      output_len: cfg.outputLen,
      sampling: { temperature: 0, ignore_eos: true, max_tokens: cfg.outputLen },
      rates: cfg.rates.map((r) => (r === Infinity ? 'inf' : r)),
      arrivals: 'Poisson (exponential gaps, seeded); rate inf = all requests sent at once',
      requests_per_rate: `min(${cfg.numRequests}, max(16, 8 x rate)); all ${cfg.numRequests} at rate inf`,
      max_concurrency: cfg.maxConcurrency === Infinity ? null : cfg.maxConcurrency,
      note:
        'Low rates send fewer requests (about 8 s or more of arrivals each) so a full run fits in ~5 minutes on a 2-core machine. ' +
        'TTFT = send to first chunk with a choice; TPOT = (e2e - TTFT) / (output tokens - 1); ITL = gaps between chunks; ' +
        'latencies in ms, measured by the client (same machine as the server, sharing its cores).',
    },
    results: [],
    overhead: null,
  };

  try {
    await warmUp(http, cfg.vocabLimit);
    for (const [i, rate] of cfg.rates.entries()) {
      const n = requestsForRate(rate, cfg.numRequests);
      const prompts = randomPrompts(n, cfg.inputLen, cfg.vocabLimit, cfg.seed + 1 + i);
      const r = await runOpenLoop(http, prompts, arrivalOffsets(n, rate, cfg.seed + 1 + i), cfg.maxConcurrency);
      const rateName = rate === Infinity ? 'inf' : rate;
      doc.results.push({ request_rate: rateName, num_requests: n, ...r });
      brief(`rate ${rateName}`, r);
    }

    if (cfg.overheadSequential > 0 || cfg.overheadBurst > 0) {
      const engineOptions = cfg.baseUrl ? {} : engineOptionsFromServerArgs(cfg.serverArgs);
      doc.overhead = await measureOverhead(cfg, http, engineOptions);
      for (const k of ['sequential', 'burst']) {
        const o = doc.overhead[k];
        if (!o) continue;
        brief(`${k}: http`, o.http);
        brief(`${k}: ts api`, o.ts_api);
        log(`overhead (${k}): ${o.per_token_overhead_ms} ms/token, ITL ${o.itl_mean_diff_ms} ms mean, TTFT ${o.ttft_mean_diff_ms} ms mean`);
      }
    }
  } finally {
    if (server) await server.stop();
  }

  doc.machine_after = { loadavg: os.loadavg().map(round3), uptime: machine().uptime };
  doc.wall_s = round3((Date.now() - started.getTime()) / 1000);
  const out = cfg.out ?? path.join(ROOT, 'bench', 'results', `serve-${started.toISOString().slice(0, 10)}.json`);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify(doc, null, 2) + '\n');
  log(`wrote ${path.relative(process.cwd(), out) || out} (${doc.wall_s} s)`);
}

/**
 * HTTP+JSON+SSE vs `LLM.stream` in this process (same engine options, same prompts). The two alternate, request by
 * request (sequential) and burst by burst (burst, `--overhead-rounds` of each), so a drift in machine load hits both
 * alike; the server's engine sits idle while the in-process one works and vice versa.
 */
async function measureOverhead(cfg, http, engineOptions) {
  const { LLM } = await import(pathToFileURL(path.join(ROOT, 'dist', 'index.js')).href);
  const llm = await LLM.create(engineOptions);
  const out = {
    method:
      'The same streaming workload through HTTP+JSON+SSE (server process; client in this process) and through `LLM.stream` in ' +
      'this process with the same engine options, alternating request by request (sequential) and burst by burst (burst). ' +
      'per_token_overhead_ms = (HTTP mean e2e - API mean e2e) / output tokens per request; *_diff_ms = HTTP - API.',
    engine_options: engineOptions,
    sequential: null,
    burst: null,
  };
  try {
    const clients = { http, api: directClient(llm, cfg.outputLen) };
    await warmUp(clients.api, cfg.vocabLimit);
    const run = async (steps) => {
      const recs = { http: [], api: [] };
      const time = { http: 0, api: 0 };
      for (const [i, prompts] of steps.entries()) {
        for (const k of i % 2 === 0 ? ['http', 'api'] : ['api', 'http']) {
          const t = now();
          recs[k].push(...(await Promise.all(prompts.map((p) => clients[k](p)))));
          time[k] += now() - t;
        }
      }
      const viaHttp = aggregate(recs.http, time.http);
      const viaApi = aggregate(recs.api, time.api);
      return { http: viaHttp, ts_api: viaApi, ...overheadOf(viaHttp, viaApi) };
    };
    if (cfg.overheadSequential > 0) {
      const prompts = randomPrompts(cfg.overheadSequential, cfg.inputLen, cfg.vocabLimit, cfg.seed + 100);
      out.sequential = { requests_each: cfg.overheadSequential, concurrency: 1, ...(await run(prompts.map((p) => [p]))) };
    }
    if (cfg.overheadBurst > 0) {
      const bursts = Array.from({ length: cfg.overheadRounds }, (_, r) =>
        randomPrompts(cfg.overheadBurst, cfg.inputLen, cfg.vocabLimit, cfg.seed + 200 + r),
      );
      out.burst = {
        requests_each: cfg.overheadBurst * cfg.overheadRounds,
        concurrency: cfg.overheadBurst,
        rounds: cfg.overheadRounds,
        ...(await run(bursts)),
      };
    }
  } finally {
    llm.close();
  }
  return out;
}

/** The engine options the started server got from --server-arg flags, so the in-process run matches it. */
function engineOptionsFromServerArgs(serverArgs) {
  const names = {
    'max-model-len': 'maxModelLen',
    'max-num-seqs': 'maxNumSeqs',
    'max-num-batched-tokens': 'maxNumBatchedTokens',
    'block-size': 'blockSize',
    'kv-cache-bytes': 'kvCacheBytes',
    seed: 'seed',
  };
  const out = {};
  for (let i = 0; i < serverArgs.length; i++) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(serverArgs[i]);
    if (!m) continue;
    if (m[1] === 'model') out.model = m[2] ?? serverArgs[++i];
    else if (m[1] === 'enable-prefix-caching') out.enablePrefixCaching = true;
    else if (m[1] === 'no-enable-prefix-caching') out.enablePrefixCaching = false;
    else if (names[m[1]]) out[names[m[1]]] = Number(m[2] ?? serverArgs[++i]);
  }
  return out;
}

main().catch((err) => {
  log(`error: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
