#!/usr/bin/env node
// What structured outputs cost (issue 10's "at most 5% of decode speed"), through the TS API in-process (dist/):
// 1. decode throughput with a JSON-Schema constraint against the same run unconstrained, at each batch size
//    (default 1, 16, 64): B chat prompts at once, each generating exactly --output-len tokens (the unconstrained
//    run uses ignore_eos; the constrained one a schema whose minItems cannot be met in that many tokens, so both
//    generate the same number of tokens), greedy. Decode tok/s counts the tokens after each request's first one,
//    over the time from the last first token to the end (the same rule as pagedllm-bench throughput);
// 2. grammar compile time of a 20-field schema: first-token latency of a never-seen schema minus that of the same
//    schema once cached, median over --compile-reps distinct schemas (each rename defeats the cache);
// 3. TTFT (one request alone) with and without a constraint.
// Writes one JSON document (machine, load before/after, command, config, results) to
// bench/results/structured-<date>.json or --out. Build first: `npm run build`. Run on an idle machine.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const USAGE = `usage: node bench/structured.mjs [options]

  --model PATH        model (default: the default model)
  --batch LIST        batch sizes (default 1,16,64)
  --output-len N      tokens per request (default 128)
  --compile-reps N    distinct 20-field schemas compiled (default 7)
  --ttft-reps N       single-request TTFT samples each way (default 7)
  --reps N            interleaved constrained/unconstrained pairs per batch size (default 3; the median is reported)
  --threads N         CPU threads (default: all cores)
  --out FILE          default bench/results/structured-<date>.json
  --note TEXT         recorded in the JSON`;

const { values: args } = parseArgs({
  options: {
    model: { type: 'string' },
    batch: { type: 'string', default: '1,16,64' },
    'output-len': { type: 'string', default: '128' },
    'compile-reps': { type: 'string', default: '7' },
    'ttft-reps': { type: 'string', default: '7' },
    reps: { type: 'string', default: '3' },
    threads: { type: 'string' },
    out: { type: 'string' },
    note: { type: 'string' },
    help: { type: 'boolean' },
  },
});
if (args.help) {
  console.log(USAGE);
  process.exit(0);
}

const round3 = (x) => Math.round(x * 1000) / 1000;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? null : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const log = (line) => process.stderr.write(`${line}\n`);

function machine() {
  let uptime = null;
  try {
    uptime = execFileSync('uptime', { encoding: 'utf8' }).trim();
  } catch {
    // not available everywhere
  }
  return {
    cpu: os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    memory_gib: round3(os.totalmem() / 2 ** 30),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    loadavg: os.loadavg().map(round3),
    uptime,
  };
}

/** A schema that keeps the model busy for `outputLen` tokens: items it cannot finish in time. */
const longSchema = (outputLen) => ({
  type: 'object',
  properties: {
    items: {
      type: 'array',
      minItems: Math.ceil(outputLen / 4),
      items: {
        type: 'object',
        properties: { id: { type: 'integer' }, name: { type: 'string', maxLength: 12 }, ok: { type: 'boolean' } },
        required: ['id', 'name', 'ok'],
        additionalProperties: false,
      },
    },
  },
  required: ['items'],
  additionalProperties: false,
});

/** A typical 20-field schema (strings, numbers, enums, a nested object, an array); `tag` makes it distinct. */
function twentyFieldSchema(tag) {
  const properties = {};
  const kinds = [
    { type: 'string', maxLength: 40 },
    { type: 'integer', minimum: 0 },
    { type: 'number' },
    { type: 'boolean' },
    { enum: ['low', 'medium', 'high'] },
    { type: 'string', format: 'date' },
    { type: 'array', items: { type: 'string', maxLength: 10 }, maxItems: 5 },
    { type: 'object', properties: { x: { type: 'number' }, y: { type: 'number' } }, required: ['x', 'y'] },
  ];
  for (let i = 0; i < 20; i++) properties[`${tag}_field_${i}`] = kinds[i % kinds.length];
  return { type: 'object', properties, required: Object.keys(properties), additionalProperties: false };
}

async function firstTokenSeconds(llm, prompt, params) {
  const t0 = performance.now();
  for await (const d of llm.stream(prompt, { ...params, maxTokens: 1 })) {
    if (d.tokenIds.length > 0) return (performance.now() - t0) / 1000;
  }
  return (performance.now() - t0) / 1000;
}

async function decodeRun(llm, prompt, batch, params) {
  const t0 = performance.now();
  const firsts = [];
  let tokens = 0;
  await Promise.all(
    Array.from({ length: batch }, async () => {
      let first = null;
      for await (const d of llm.stream(prompt, params)) {
        if (first === null && d.tokenIds.length > 0) first = performance.now();
        tokens += d.tokenIds.length;
      }
      firsts.push(first ?? performance.now());
    }),
  );
  const end = performance.now();
  const lastFirst = Math.max(...firsts);
  return {
    wall_s: round3((end - t0) / 1000),
    output_tokens: tokens,
    output_tokens_per_s: round3(tokens / ((end - t0) / 1000)),
    decode_tokens_per_s: end > lastFirst ? round3((tokens - batch) / ((end - lastFirst) / 1000)) : null,
  };
}

async function main() {
  const { LLM } = await import(pathToFileURL(path.join(ROOT, 'dist/index.js')).href);
  const batches = args.batch.split(',').map(Number);
  const outputLen = Number(args['output-len']);
  const reps = Math.max(1, Number(args.reps));
  const before = machine();
  const llm = await LLM.create({
    ...(args.model ? { model: args.model } : {}),
    ...(args.threads ? { numThreads: Number(args.threads) } : {}),
    maxNumSeqs: Math.max(...batches),
    kvCacheBytes: 1 << 30,
  });
  const prompt = llm.applyChatTemplate([{ role: 'user', content: 'List some products as JSON.' }]);
  const schema = longSchema(outputLen);
  const base = { temperature: 0, maxTokens: outputLen };

  // Warm-up (threads, caches, the constraint's compile).
  await decodeRun(llm, prompt, 1, { ...base, maxTokens: 8, ignoreEos: true });
  await decodeRun(llm, prompt, 1, { ...base, maxTokens: 8, structuredOutputs: { json: schema } });

  const decode = [];
  for (const batch of batches) {
    // --reps interleaved pairs, the order alternating (U C, C U, ...), so drift and warm-up hit both sides alike;
    // each side's figure is the median run by decode tok/s.
    const runs = { unconstrained: [], constrained: [] };
    for (let rep = 0; rep < reps; rep++) {
      const order = rep % 2 === 0 ? ['unconstrained', 'constrained'] : ['constrained', 'unconstrained'];
      for (const kind of order) {
        const params = kind === 'unconstrained' ? { ...base, ignoreEos: true } : { ...base, structuredOutputs: { json: schema } };
        runs[kind].push(await decodeRun(llm, prompt, batch, params));
      }
    }
    const medianRun = (rs) => [...rs].sort((a, b) => (a.decode_tokens_per_s ?? 0) - (b.decode_tokens_per_s ?? 0))[Math.floor(rs.length / 2)];
    const unconstrained = { ...medianRun(runs.unconstrained), runs_decode_tokens_per_s: runs.unconstrained.map((r) => r.decode_tokens_per_s) };
    const constrained = { ...medianRun(runs.constrained), runs_decode_tokens_per_s: runs.constrained.map((r) => r.decode_tokens_per_s) };
    const cost =
      unconstrained.decode_tokens_per_s && constrained.decode_tokens_per_s
        ? round3(100 * (1 - constrained.decode_tokens_per_s / unconstrained.decode_tokens_per_s))
        : null;
    log(`batch ${batch}: ${unconstrained.decode_tokens_per_s} tok/s unconstrained, ${constrained.decode_tokens_per_s} constrained (${cost}% lower)`);
    decode.push({ batch, unconstrained, constrained, decode_cost_percent: cost });
  }

  const compileMs = [];
  for (let i = 0; i < Number(args['compile-reps']); i++) {
    const s = { structuredOutputs: { json: twentyFieldSchema(`r${i}_${Date.now()}`) }, temperature: 0 };
    const fresh = await firstTokenSeconds(llm, prompt, s);
    const cached = await firstTokenSeconds(llm, prompt, s);
    compileMs.push(round3((fresh - cached) * 1000));
  }
  log(`20-field schema compile: median ${median(compileMs)} ms`);

  const ttftWith = [];
  const ttftWithout = [];
  for (let i = 0; i < Number(args['ttft-reps']); i++) {
    ttftWithout.push(await firstTokenSeconds(llm, prompt, { temperature: 0 }));
    ttftWith.push(await firstTokenSeconds(llm, prompt, { temperature: 0, structuredOutputs: { json: schema } }));
  }
  await llm.close();

  const date = new Date().toISOString().slice(0, 10);
  const out = args.out ?? path.join(ROOT, 'bench/results', `structured-${date}.json`);
  const doc = {
    benchmark: 'structured-outputs',
    date: new Date().toISOString(),
    command: ['node', 'bench/structured.mjs', ...process.argv.slice(2)].join(' '),
    note: args.note ?? null,
    machine_before: before,
    machine_after: machine(),
    config: { model: args.model ?? 'default (SmolLM2-135M-Instruct Q4_1)', batches, output_len: outputLen, reps, schema },
    decode,
    compile_20_field_schema_ms: { median: median(compileMs), samples: compileMs },
    ttft_s: {
      unconstrained_median: round3(median(ttftWithout)),
      constrained_cached_median: round3(median(ttftWith)),
      unconstrained: ttftWithout.map(round3),
      constrained_cached: ttftWith.map(round3),
    },
  };
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, `${JSON.stringify(doc, null, 2)}\n`);
  log(`wrote ${out}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
