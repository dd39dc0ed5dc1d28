// The TS API against the real engine and the default model (fetched by `npm install`). One engine for the file;
// small maxTokens keep it fast on two cores.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  AbortError,
  ContextLengthError,
  type LLM,
  PagedLLMError,
  type Prompt,
  type SamplingParamsInput,
  ValidationError,
} from '../src/index.js';
import { createTestLLM, waitFor } from './helpers.js';

const PROMPT = 'The capital of France is';
const GREEDY = { temperature: 0, maxTokens: 8 } as const;

let llm: LLM;
beforeAll(async () => {
  llm = await createTestLLM();
});
afterAll(() => llm?.close());

async function expectRejection(p: Promise<unknown>): Promise<PagedLLMError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PagedLLMError);
  return err as PagedLLMError;
}

describe('LLM (real engine)', () => {
  // First in the file, so the batch high-water mark comes from this test alone.
  it('batches concurrent generate calls', async () => {
    const prompts = Array.from({ length: 8 }, (_, i) => `Question ${i + 1}: what is ${i} plus ${i}?`);
    const outs = await Promise.all(prompts.map((p) => llm.generate(p, { temperature: 0, maxTokens: 8, ignoreEos: true })));
    for (const [out] of outs) {
      expect(out!.finished).toBe(true);
      expect(out!.outputs[0]!.tokenIds).toHaveLength(8);
      expect(out!.outputs[0]!.finishReason).toBe('length');
    }
    const stats = llm.stats();
    expect(stats.maxBatchSeqs).toBeGreaterThan(1);
    // Every step spends engine-thread time somewhere; on the CPU backend the forward counts as launch.
    const phases = stats.stepPhaseSeconds;
    expect(phases.launch).toBeGreaterThan(0);
    expect(phases.schedule).toBeGreaterThan(0);
    for (const v of Object.values(phases)) expect(v).toBeGreaterThanOrEqual(0);
  });

  it('reports the model it loaded', () => {
    expect(llm.modelInfo.vocabSize).toBe(49152);
    expect(llm.modelInfo.maxModelLen).toBe(512);
    expect(llm.modelInfo.hasChatTemplate).toBe(true);
    expect(llm.isAlive).toBe(true);
  });

  it('reports its start-up by phase', () => {
    const { startupPhases, startupS } = llm.modelInfo;
    expect(startupPhases.map((p) => p.name)).toEqual(['load_model', 'tokenizer', 'backend_init', 'weights_prepare']);
    for (const p of startupPhases) expect(p.seconds).toBeGreaterThanOrEqual(0);
    const sum = startupPhases.reduce((s, p) => s + p.seconds, 0);
    expect(sum).toBeGreaterThan(0);
    expect(sum).toBeLessThanOrEqual(startupS + 1e-6);
  });

  it('greedy generation is deterministic', async () => {
    const [a] = await llm.generate(PROMPT, GREEDY);
    const [b] = await llm.generate(PROMPT, GREEDY);
    expect(a!.prompt).toBe(PROMPT);
    expect(a!.promptTokenIds).toEqual(llm.tokenize(PROMPT));
    expect(a!.outputs).toHaveLength(1);
    const out = a!.outputs[0]!;
    expect(out.text.length).toBeGreaterThan(0);
    expect(out.tokenIds.length).toBeGreaterThan(0);
    expect(out.tokenIds.length).toBeLessThanOrEqual(8);
    expect(['stop', 'length']).toContain(out.finishReason);
    expect(b!.outputs[0]!.text).toBe(out.text);
    expect(b!.outputs[0]!.tokenIds).toEqual(out.tokenIds);
    expect(llm.detokenize(out.tokenIds)).toBe(out.text);
    expect(a!.metrics?.numPromptTokens).toBe(a!.promptTokenIds.length);
    expect(a!.metrics?.numGenerationTokens).toBe(out.tokenIds.length);
  });

  it('generates for several prompts at once, in prompt order', async () => {
    const prompts: Prompt[] = [PROMPT, 'Once upon a time', [1, 2, 3]];
    const outs = await llm.generate(prompts, GREEDY);
    expect(outs).toHaveLength(3);
    const [single] = await llm.generate(PROMPT, GREEDY);
    expect(outs[0]!.outputs[0]!.text).toBe(single!.outputs[0]!.text);
    expect(outs[2]!.prompt).toBeNull();
    expect(outs[2]!.promptTokenIds).toEqual([1, 2, 3]);
  });

  it('stream concatenation equals generate under greedy', async () => {
    const [whole] = await llm.generate(PROMPT, { temperature: 0, maxTokens: 12 });
    let text = '';
    const ids: number[] = [];
    let last;
    for await (const chunk of llm.stream(PROMPT, { temperature: 0, maxTokens: 12 })) {
      expect(chunk.index).toBe(0);
      text += chunk.text;
      ids.push(...chunk.tokenIds);
      last = chunk;
    }
    expect(text).toBe(whole!.outputs[0]!.text);
    expect(ids).toEqual(whole!.outputs[0]!.tokenIds);
    expect(last?.finished).toBe(true);
    expect(last?.finishReason).toBe(whole!.outputs[0]!.finishReason);
  });

  it('chat applies the template and answers', async () => {
    const messages = [{ role: 'user', content: 'What is the capital of France?' }];
    const prompt = llm.applyChatTemplate(messages);
    expect(prompt).toContain('<|im_start|>user\nWhat is the capital of France?<|im_end|>');
    expect(prompt.endsWith('<|im_start|>assistant\n')).toBe(true);
    const out = await llm.chat(messages, { temperature: 0, maxTokens: 16 });
    expect(out.prompt).toBe(prompt);
    expect(out.promptTokenIds).toEqual(llm.tokenize(prompt, { addSpecialTokens: false }));
    expect(out.outputs[0]!.text.trim().length).toBeGreaterThan(0);
    expect(out.outputs[0]!.text).not.toContain('<|im_start|>');
    const noGenPrompt = llm.applyChatTemplate(messages, { addGenerationPrompt: false });
    expect(noGenPrompt.endsWith('<|im_start|>assistant\n')).toBe(false);
  });

  it('aborting a stream via AbortSignal ends it with AbortError and frees the request', async () => {
    const controller = new AbortController();
    let chunks = 0;
    const run = async () => {
      for await (const chunk of llm.stream(PROMPT, { temperature: 0, maxTokens: 400, ignoreEos: true }, { signal: controller.signal })) {
        if (chunk.tokenIds.length > 0 && ++chunks === 2) controller.abort();
      }
    };
    await expect(run()).rejects.toBeInstanceOf(AbortError);
    expect(chunks).toBeGreaterThanOrEqual(2);
    expect(await waitFor(() => llm.stats().numRunning === 0 && llm.stats().numWaiting === 0)).toBe(true);
    expect(await waitFor(() => llm.stats().kvBlocksInUse === 0)).toBe(true);
  });

  it('aborting generate rejects with AbortError and frees the request', async () => {
    const controller = new AbortController();
    const p = llm.generate(PROMPT, { maxTokens: 400, ignoreEos: true }, { signal: controller.signal });
    setTimeout(() => controller.abort(new Error('user gave up')), 50);
    const err = await expectRejection(p);
    expect(err).toBeInstanceOf(AbortError);
    expect(err.code).toBe('aborted');
    expect(await waitFor(() => llm.stats().numRunning === 0 && llm.stats().kvBlocksInUse === 0)).toBe(true);
    // An already-aborted signal never submits.
    const before = llm.stats().promptTokensTotal;
    await expect(llm.generate(PROMPT, GREEDY, { signal: AbortSignal.abort() })).rejects.toBeInstanceOf(AbortError);
    expect(llm.stats().promptTokensTotal).toBe(before);
  });

  it('n=2 returns two samples', async () => {
    const [out] = await llm.generate(PROMPT, { n: 2, temperature: 0.8, seed: 3, maxTokens: 6 });
    expect(out!.outputs.map((o) => o.index)).toEqual([0, 1]);
    for (const o of out!.outputs) {
      expect(o.tokenIds.length).toBeGreaterThan(0);
      expect(o.finishReason).not.toBeNull();
    }
  });

  it('a seed makes sampling reproducible', async () => {
    const params: SamplingParamsInput = { temperature: 1.0, topP: 0.95, seed: 1234, maxTokens: 12, ignoreEos: true };
    const [a] = await llm.generate(PROMPT, params);
    const [b] = await llm.generate(PROMPT, params);
    expect(b!.outputs[0]!.tokenIds).toEqual(a!.outputs[0]!.tokenIds);
    expect(b!.outputs[0]!.text).toBe(a!.outputs[0]!.text);
  });

  it('stops at a stop string', async () => {
    const [base] = await llm.generate(PROMPT, { temperature: 0, maxTokens: 16, ignoreEos: true });
    const text = base!.outputs[0]!.text;
    // A 3-character piece from the middle of the greedy output; generation must stop right before it.
    const from = Math.floor(text.length / 2);
    const stop = text.slice(from, from + 3);
    expect(stop.trim().length).toBeGreaterThan(0);
    const at = text.indexOf(stop);
    const [cut] = await llm.generate(PROMPT, { temperature: 0, maxTokens: 16, ignoreEos: true, stop: [stop] });
    expect(cut!.outputs[0]!.text).toBe(text.slice(0, at));
    expect(cut!.outputs[0]!.finishReason).toBe('stop');
    expect(cut!.outputs[0]!.stopReason).toBe(stop);
    const [kept] = await llm.generate(PROMPT, {
      temperature: 0,
      maxTokens: 16,
      ignoreEos: true,
      stop,
      includeStopStrInOutput: true,
    });
    expect(kept!.outputs[0]!.text).toBe(text.slice(0, at + stop.length));
  });

  it('returns log-probs of the requested shape', async () => {
    const [out] = await llm.generate(PROMPT, { temperature: 0, maxTokens: 5, logprobs: 3, promptLogprobs: 2 });
    const o = out!.outputs[0]!;
    expect(o.logprobs).not.toBeNull();
    expect(o.logprobs!).toHaveLength(o.tokenIds.length);
    let sum = 0;
    o.logprobs!.forEach((lp, i) => {
      expect(lp.tokenId).toBe(o.tokenIds[i]);
      expect(lp.logprob).toBeLessThanOrEqual(0);
      expect(lp.rank).toBe(1); // greedy picks the most likely token
      expect(lp.top).toHaveLength(3);
      expect(lp.top[0]!.tokenId).toBe(lp.tokenId);
      for (let k = 1; k < lp.top.length; k++) expect(lp.top[k]!.logprob).toBeLessThanOrEqual(lp.top[k - 1]!.logprob);
      sum += lp.logprob;
    });
    expect(o.cumulativeLogprob).toBeCloseTo(sum, 3);
    expect(out!.promptLogprobs).not.toBeNull();
    expect(out!.promptLogprobs!).toHaveLength(out!.promptTokenIds.length);
    expect(out!.promptLogprobs![0]).toBeNull();
    expect(out!.promptLogprobs![1]!.tokenId).toBe(out!.promptTokenIds[1]);
    expect(out!.promptLogprobs![1]!.top).toHaveLength(2);
  });

  const invalid: [SamplingParamsInput, string][] = [
    [{ temperature: -1 }, 'temperature'],
    [{ topP: 0 }, 'topP'],
    [{ topP: 1.01 }, 'topP'],
    [{ n: 0 }, 'n'],
    [{ maxTokens: 0 }, 'maxTokens'],
    [{ logprobs: 21 }, 'logprobs'],
  ];
  it.each(invalid)('rejects %j naming %s', async (params, field) => {
    const err = await expectRejection(llm.generate(PROMPT, params));
    expect(err).toBeInstanceOf(ValidationError);
    expect(err.param).toBe(field);
    expect(err.message).toContain(field);
  });

  it('rejects token ids outside the vocabulary, naming the field and the token', async () => {
    const err = await expectRejection(llm.generate([[1, 2, 999_999]], GREEDY));
    expect(err).toBeInstanceOf(ValidationError);
    expect(err.param).toBe('prompt');
    expect(err.message).toContain('999999');
    // Checked by the engine itself (the TS layer does not know the vocabulary rule for these).
    const err2 = await expectRejection(llm.generate(PROMPT, { ...GREEDY, stopTokenIds: [49152] }));
    expect(err2.code).toBe('invalid_param');
    expect(err2.param).toBe('stopTokenIds');
    expect(err2.message).toContain('49152');
    const err3 = await expectRejection(llm.generate(PROMPT, { ...GREEDY, logitBias: { '60000': 1 } }));
    expect(err3.param).toBe('logitBias');
  });

  it('rejects only the request that exceeds the context while another completes', async () => {
    const long = Array.from({ length: 500 }, (_, i) => 100 + (i % 1000));
    const [tooLong, fine] = await Promise.allSettled([
      llm.generate([long], { maxTokens: 100 }),
      llm.generate(PROMPT, GREEDY),
    ]);
    expect(tooLong.status).toBe('rejected');
    const err = (tooLong as PromiseRejectedResult).reason as PagedLLMError;
    expect(err).toBeInstanceOf(ContextLengthError);
    expect(err.code).toBe('context_length_exceeded');
    expect(err.message).toContain('512');
    expect(fine.status).toBe('fulfilled');
    expect((fine as PromiseFulfilledResult<Awaited<ReturnType<LLM['generate']>>>).value[0]!.finished).toBe(true);
  });

  it('tokenize and detokenize round-trip', () => {
    const text = 'Hello, world! Ünïcödé 你好';
    const ids = llm.tokenize(text, { addSpecialTokens: false });
    expect(ids.length).toBeGreaterThan(3);
    expect(llm.detokenize(ids)).toBe(text);
  });

  it('has nothing in flight after all of the above', async () => {
    expect(await waitFor(() => llm.stats().numRunning === 0 && llm.stats().kvBlocksInUse === 0)).toBe(true);
    const s = llm.stats();
    expect(s.requestsFinishedTotal).toBeGreaterThan(10);
    expect(s.generationTokensTotal).toBeGreaterThan(0);
  });
});
