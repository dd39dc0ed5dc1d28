// Issue 15 on the GPU through the surfaces a user calls, run ON the GPU machine inside the app that
// scripts/gpu/build-npm-cuda-app.sh installed (scripts/gpu/npm-cuda-check.sh runs it):
//   node npm-cuda-beam-check.mjs MODEL_DIR SERVER_URL OUT_FILE
// where SERVER_URL is a `pagedllm serve --device cuda --dtype float32 --gpu-memory-utilization 0.3` of the same
// model (this script's engines take up to 0.6 of the GPU, the server's share included). Checks, each printed as
// PASS/FAIL and written to OUT_FILE as JSON:
//   1. `llm.beamSearch` on CUDA (float32) returns the CPU backend's beams: tokens equal, scores within 1e-3;
//   2. `generate({ n: 2, bestOf: 6, seed })` on CUDA returns the top 2 by cumulative log-prob of the 6 samples
//      that the same seeded request with `n: 6` generates (sample i has its own stream whatever its batch);
//   3. the server's `/v1/completions` with `use_beam_search` (plain and streamed) and `/v1/chat/completions`
//      return the TS API's CUDA beams.
import fs from 'node:fs';
import { LLM } from 'pagedllm';

const [model, server, outFile] = process.argv.slice(2);
if (!model || !server || !outFile) throw new Error('usage: node npm-cuda-beam-check.mjs MODEL_DIR SERVER_URL OUT_FILE');
const results = [];
const check = (name, ok, detail) => {
  results.push({ name, ok, detail });
  console.log(`${ok ? 'PASS' : 'FAIL'} ${name}${detail ? `: ${JSON.stringify(detail)}` : ''}`);
};
const PROMPTS = ['The capital of France is', 'Once upon a time'];
const BEAM = { beamWidth: 4, maxTokens: 16 };

async function beamsOn(device) {
  const llm = await LLM.create({ model, device, dtype: 'float32', gpuMemoryUtilization: 0.6, kvCacheBytes: 64 << 20 });
  try {
    const outs = await llm.beamSearch(PROMPTS, BEAM);
    return outs.map((o) => o.outputs.map((b) => ({ tokenIds: b.tokenIds, text: b.text, score: b.cumulativeLogprob })));
  } finally {
    llm.close();
  }
}

const cuda = await beamsOn('cuda');
const cpu = await beamsOn('cpu');
const sameTokens = JSON.stringify(cuda.map((p) => p.map((b) => b.tokenIds))) === JSON.stringify(cpu.map((p) => p.map((b) => b.tokenIds)));
const maxScoreDiff = Math.max(...cuda.flatMap((p, i) => p.map((b, j) => Math.abs(b.score - cpu[i][j].score))));
check('llm.beamSearch: CUDA beams = CPU beams', sameTokens && maxScoreDiff < 1e-3, { maxScoreDiff, beamsPerPrompt: cuda.map((p) => p.length) });

const llm = await LLM.create({ model, device: 'cuda', dtype: 'float32', gpuMemoryUtilization: 0.6 });
try {
  const sampled = { temperature: 1, seed: 99, maxTokens: 12, ignoreEos: true };
  const [all] = await llm.generate(PROMPTS[0], { ...sampled, n: 6 });
  const ranked = [...all.outputs].sort((a, b) => b.cumulativeLogprob - a.cumulativeLogprob);
  const [best] = await llm.generate(PROMPTS[0], { ...sampled, n: 2, bestOf: 6 });
  const ok =
    best.outputs.length === 2 &&
    best.outputs.every((o, i) => JSON.stringify(o.tokenIds) === JSON.stringify(ranked[i].tokenIds)) &&
    ranked[0].cumulativeLogprob > ranked[5].cumulativeLogprob;
  check('generate bestOf 6 / n 2 on CUDA: the top 2 of the 6 seeded samples', ok, {
    candidates: ranked.map((o) => o.cumulativeLogprob),
    returned: best.outputs.map((o) => o.cumulativeLogprob),
  });
} finally {
  llm.close();
}

const post = async (path, body) => {
  const res = await fetch(server + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, text: await res.text() };
};
const body = { model: 'm', prompt: PROMPTS[0], n: 4, use_beam_search: true, max_tokens: BEAM.maxTokens };
const plain = await post('/v1/completions', body);
const choices = plain.status === 200 ? JSON.parse(plain.text).choices : [];
check('server /v1/completions use_beam_search on CUDA = llm.beamSearch', plain.status === 200 && JSON.stringify(choices.map((c) => c.text)) === JSON.stringify(cuda[0].map((b) => b.text)), {
  status: plain.status,
  texts: choices.map((c) => c.text),
});
const streamed = await post('/v1/completions', { ...body, stream: true });
const texts = new Map();
for (const line of streamed.text.split('\n')) {
  if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
  for (const c of JSON.parse(line.slice(6)).choices) texts.set(c.index, (texts.get(c.index) ?? '') + c.text);
}
check('server streamed use_beam_search on CUDA: the same beams', streamed.status === 200 && JSON.stringify([0, 1, 2, 3].map((i) => texts.get(i))) === JSON.stringify(cuda[0].map((b) => b.text)), {
  status: streamed.status,
});
const chat = await post('/v1/chat/completions', { model: 'm', messages: [{ role: 'user', content: 'Hi' }], n: 2, use_beam_search: true, max_tokens: 8 });
check('server /v1/chat/completions use_beam_search on CUDA', chat.status === 200 && JSON.parse(chat.text).choices.length === 2, { status: chat.status });
const bestOf = await post('/v1/completions', { model: 'm', prompt: PROMPTS[0], n: 1, best_of: 3, seed: 5, temperature: 1, max_tokens: 8 });
check('server /v1/completions best_of on CUDA', bestOf.status === 200 && JSON.parse(bestOf.text).choices.length === 1, { status: bestOf.status });

fs.writeFileSync(outFile, `${JSON.stringify({ results }, null, 2)}\n`);
process.exit(results.every((r) => r.ok) ? 0 : 1);
