#!/usr/bin/env node
// The PagedAttention paper's second win (issue 15): sequences of one request share KV blocks copy-on-write, which
// cuts the memory of parallel sampling and beam search ("up to 55%" in the paper). Through the TS API in-process
// (dist/), on a fresh engine per configuration with prefix caching OFF (so independent requests share nothing):
//
//   memory (deterministic block counts, fine to run anywhere):
//     - n = 8 parallel samples of one prompt         vs 8 independent requests of that prompt
//     - beam search width 4 / width 8 of one prompt  vs 4 / 8 independent requests of that prompt
//     Each configuration reports the engine's peak KV blocks in use (`maxKvBlocksInUse`, measured after each
//     step's scheduling) and the saving 1 - shared / independent. Every sequence generates exactly
//     --output-len tokens (ignoreEos), greedy or seeded, from a --prompt-len-token prompt.
//   throughput (--throughput; timings, so run it on an idle machine):
//     - beam search width W vs greedy decoding of W independent requests (the same number of sequences per
//       step, the same prompt, the same --output-len tokens each), on fresh engines after a one-token warm-up:
//       wall seconds, generated tokens per second (W * output-len / seconds), and beam / greedy; and the decode
//       phase alone (last first token to last finish, from the outputs' metrics), where the prompt's prefill,
//       done once by a beam search and W times by W independent requests, does not count.
//
// Writes one JSON document (command, machine, config, results) to bench/results/beam-memory-<date>.json or --out.
// Build first: `npm run build`.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const USAGE = `usage: node bench/beam-memory.mjs [options]

  --model PATH        model (default: the default model)
  --prompt-len N      prompt tokens (default 512)
  --output-len N      tokens per sequence (default 128); --max-tokens N is the same
  --widths LIST       beam widths (default 4,8)
  --parallel N        n of the parallel-sampling case (default 8)
  --throughput        also time beam search against greedy at the same number of sequences
  --rounds N          interleaved timing rounds, medians reported (default 1)
  --device NAME       cpu (default) or cuda
  --threads N         CPU threads (default: all cores)
  --out FILE          default bench/results/beam-memory-<date>.json
  --note TEXT         recorded in the JSON`;

const { values: args } = parseArgs({
  options: {
    model: { type: 'string' },
    'prompt-len': { type: 'string', default: '512' },
    'output-len': { type: 'string' },
    'max-tokens': { type: 'string' },
    widths: { type: 'string', default: '4,8' },
    parallel: { type: 'string', default: '8' },
    throughput: { type: 'boolean', default: false },
    rounds: { type: 'string', default: '1' },
    device: { type: 'string', default: 'cpu' },
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

const promptLen = Number(args['prompt-len']);
const outputLen = Number(args['output-len'] ?? args['max-tokens'] ?? '128');
for (const [name, v] of [['prompt-len', promptLen], ['output-len', outputLen], ['parallel', Number(args.parallel)]]) {
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} must be a positive integer`);
}
const widths = args.widths.split(',').map(Number);
if (widths.some((w) => !Number.isInteger(w) || w < 1)) throw new Error(`--widths must list positive integers, got ${args.widths}`);
const parallel = Number(args.parallel);
const rounds = Number(args.rounds);
if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds must be a positive integer, got ${args.rounds}`);
const log = (line) => process.stderr.write(`${line}\n`);

const { LLM } = await import(pathToFileURL(path.join(ROOT, 'dist', 'index.js')).href);

/** A fresh engine sized for the largest case; prefix caching off, so independent requests share nothing. */
async function engine() {
  const opts = {
    maxModelLen: promptLen + outputLen + 16,
    maxNumSeqs: Math.max(parallel, ...widths),
    kvCacheBytes: 1 << 30,
    enablePrefixCaching: false,
    device: args.device,
  };
  if (args.model) opts.model = args.model;
  if (args.threads) opts.numThreads = Number(args.threads);
  return LLM.create(opts);
}

/** A prompt of exactly `promptLen` tokens (a repeated sentence, cut at the token level). */
function promptIds(llm) {
  const sentence = 'The quick brown fox jumps over the lazy dog while the river keeps flowing to the sea. ';
  const ids = llm.tokenize(sentence.repeat(Math.ceil(promptLen / 8)));
  if (ids.length < promptLen) throw new Error('the prompt text is too short');
  return ids.slice(0, promptLen);
}

/** Runs `submit` on a fresh engine (after a one-token warm-up, so thread start-up is not timed); returns the
 * peak blocks, the generated tokens and the wall time. */
async function measure(label, submit) {
  const llm = await engine();
  try {
    const ids = promptIds(llm);
    await llm.generate([ids.slice(0, 8)], { temperature: 0, maxTokens: 1 });
    const t0 = performance.now();
    const outs = await submit(llm, ids);
    const seconds = (performance.now() - t0) / 1000;
    const stats = llm.stats();
    const sequences = outs.flatMap((o) => o.outputs);
    const tokens = sequences.reduce((s, o) => s + o.tokenIds.length, 0);
    if (sequences.some((o) => o.tokenIds.length !== outputLen)) throw new Error(`${label}: a sequence did not generate ${outputLen} tokens`);
    // The decode phase alone: from the last request's first token to the last finish (independent requests
    // prefill the prompt once each with prefix caching off, a beam search once, so end-to-end mixes the two).
    const firstTokens = outs.map((o) => o.metrics?.firstTokenTime);
    const finishes = outs.map((o) => o.metrics?.finishedTime);
    const decodeSeconds = [...firstTokens, ...finishes].every((t) => typeof t === 'number')
      ? Math.max(...finishes) - Math.max(...firstTokens)
      : null;
    const r = {
      label,
      sequences: sequences.length,
      peakKvBlocks: stats.maxKvBlocksInUse,
      generatedTokens: tokens,
      seconds,
      decodeSeconds,
      decodeTokens: sequences.length * (outputLen - 1),
      preemptions: stats.numPreemptions,
    };
    log(`${label}: ${sequences.length} sequences, peak ${r.peakKvBlocks} KV blocks, ${seconds.toFixed(1)} s`);
    return r;
  } finally {
    llm.close();
  }
}

const sampled = (n) => ({ n, temperature: 1, seed: 1, maxTokens: outputLen, ignoreEos: true });
const independent = (count, params) => (llm, ids) => llm.generate(Array.from({ length: count }, () => ids), params);

const memory = [];
const saving = (shared, indep) => ({
  shared: shared.label,
  independent: indep.label,
  sharedPeakKvBlocks: shared.peakKvBlocks,
  independentPeakKvBlocks: indep.peakKvBlocks,
  saving: Math.round((1 - shared.peakKvBlocks / indep.peakKvBlocks) * 1000) / 1000,
});
{
  const shared = await measure(`parallel sampling n=${parallel}`, (llm, ids) => llm.generate([ids], sampled(parallel)));
  const indep = await measure(`${parallel} independent sampled requests`, independent(parallel, sampled(1)));
  memory.push(saving(shared, indep));
}
for (const w of widths) {
  const shared = await measure(`beam search width ${w}`, (llm, ids) => llm.beamSearch([ids], { beamWidth: w, maxTokens: outputLen, ignoreEos: true }));
  const indep = await measure(`${w} independent greedy requests`, independent(w, { temperature: 0, maxTokens: outputLen, ignoreEos: true }));
  memory.push(saving(shared, indep));
}

// Beam search against greedy decoding at the same batch: W beams vs W independent greedy requests.
const throughput = [];
if (args.throughput) {
  const rate = (r) => ({
    seconds: r.seconds,
    generatedTokens: r.generatedTokens,
    tokensPerSecond: r.generatedTokens / r.seconds,
    decodeSeconds: r.decodeSeconds,
    decodeTokensPerSecond: r.decodeSeconds ? r.decodeTokens / r.decodeSeconds : null,
    preemptions: r.preemptions,
  });
  // Interleaved rounds, the median of each figure: one run of a configuration varies by ~10% on a shared vCPU.
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const medianRate = (runs) => {
    const rs = runs.map(rate);
    const m = (k) => (rs.every((r) => r[k] !== null) ? median(rs.map((r) => r[k])) : null);
    return { ...Object.fromEntries(['seconds', 'tokensPerSecond', 'decodeSeconds', 'decodeTokensPerSecond'].map((k) => [k, m(k)])), generatedTokens: rs[0].generatedTokens, preemptions: Math.max(...rs.map((r) => r.preemptions)), rounds: rs.length };
  };
  for (const w of widths) {
    const beams = [];
    const greedies = [];
    for (let round = 0; round < rounds; round++) {
      beams.push(await measure(`timed ${round + 1}/${rounds}: beam search width ${w}`, (llm, ids) => llm.beamSearch([ids], { beamWidth: w, maxTokens: outputLen, ignoreEos: true })));
      greedies.push(await measure(`timed ${round + 1}/${rounds}: ${w} independent greedy requests`, independent(w, { temperature: 0, maxTokens: outputLen, ignoreEos: true })));
    }
    const b = medianRate(beams);
    const g = medianRate(greedies);
    throughput.push({
      sequences: w,
      beamSearch: b,
      greedy: g,
      beamOverGreedy: b.tokensPerSecond / g.tokensPerSecond,
      beamOverGreedyDecode: b.decodeTokensPerSecond && g.decodeTokensPerSecond ? b.decodeTokensPerSecond / g.decodeTokensPerSecond : null,
    });
  }
}

const doc = {
  command: `node ${process.argv.slice(1).map((a) => path.relative(ROOT, a) || a).join(' ')}`,
  date: new Date().toISOString(),
  machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? null, loadavg: os.loadavg(), platform: `${os.platform()} ${os.arch()}` },
  config: { model: args.model ?? 'default (SmolLM2-135M-Instruct Q4_1)', promptLen, outputLen, widths, parallel, rounds, device: args.device, prefixCaching: false },
  note: args.note ?? null,
  results: { memory, throughput, timingsValid: args.throughput },
};
const out = args.out ?? path.join(ROOT, 'bench', 'results', `beam-memory-${doc.date.slice(0, 10)}.json`);
fs.writeFileSync(out, `${JSON.stringify(doc, null, 2)}\n`);
console.log(JSON.stringify({ memory, throughput }, null, 2));
log(`wrote ${path.relative(ROOT, out)}`);
