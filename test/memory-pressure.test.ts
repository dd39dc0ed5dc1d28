/**
 * Memory pressure end to end (issue "Hardening"): the real default model behind the HTTP API with a KV cache far
 * too small for the offered load (`kvCacheBytes` of ~2 full-length requests, 8 concurrent requests that each grow
 * to 8 blocks). Every request must finish with its full length, the scheduler must have preempted (counted in
 * `vllm:num_preemptions_total`), and the greedy outputs must equal the same requests run one at a time: preemption
 * (recompute) changes when work happens, never what comes out.
 */

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { LLM } from '../src/index.js';
import { createApp } from '../src/server/app.js';
import { waitFor } from './helpers.js';

const MAX_TOKENS = 64;
const CONCURRENT = 8;
const BLOCK_SIZE = 16;
let llm: LLM;
let app: ReturnType<typeof createApp>['app'];

beforeAll(async () => {
  // Bytes per block of SmolLM2-135M (f32 K and V, 30 layers, 3 KV heads of 64): 2 * 30 * 16 * 3 * 64 * 4.
  const perBlock = 2 * 30 * BLOCK_SIZE * 3 * 64 * 4;
  llm = await LLM.create({ kvCacheBytes: perBlock * 18, maxModelLen: 256, blockSize: BLOCK_SIZE, maxNumSeqs: CONCURRENT });
  ({ app } = createApp(llm, { disableLogRequests: true }));
});

afterAll(() => llm?.close());

const prompts = Array.from({ length: CONCURRENT }, (_, i) => `Story ${i + 1}: once upon a time, in a land of ${['rivers', 'hills', 'snow', 'sand', 'glass', 'fog', 'bells', 'stars'][i]},`);

async function complete(prompt: string): Promise<{ text: string; tokens: number; finish: string }> {
  const res = await app.request('/v1/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: MAX_TOKENS, temperature: 0, ignore_eos: true }),
  });
  expect(res.status).toBe(200);
  const body = (await res.json()) as { choices: { text: string; finish_reason: string }[]; usage: { completion_tokens: number } };
  return { text: body.choices[0]!.text, tokens: body.usage.completion_tokens, finish: body.choices[0]!.finish_reason };
}

async function preemptions(): Promise<number> {
  await new Promise((r) => setTimeout(r, 60)); // /metrics reuses an engine snapshot for 50 ms
  const text = await (await app.request('/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith('vllm:num_preemptions_total{'));
  return Number(line!.split(' ').at(-1));
}

describe('memory pressure', () => {
  it('every request finishes, preemptions are counted, greedy outputs equal one-at-a-time runs', async () => {
    const info = llm.modelInfo;
    // The cache holds far less than the load needs: each request grows to ceil((prompt + 64) / 16) blocks.
    expect(info.numKvBlocks * info.blockSize).toBeLessThan(CONCURRENT * (MAX_TOKENS + 16));

    const alone: Awaited<ReturnType<typeof complete>>[] = [];
    for (const p of prompts) alone.push(await complete(p));
    expect(await preemptions()).toBe(0);

    const together = await Promise.all(prompts.map((p) => complete(p)));
    for (const [i, out] of together.entries()) {
      expect(out.tokens, `request ${i}`).toBe(MAX_TOKENS);
      expect(out.finish).toBe('length');
      expect(out.text, `request ${i}: same greedy text under preemption`).toBe(alone[i]!.text);
    }
    expect(await preemptions()).toBeGreaterThan(0);
    expect(await waitFor(() => llm.stats().kvBlocksInUse === 0 && llm.stats().numRunning === 0)).toBe(true);
  });
});
