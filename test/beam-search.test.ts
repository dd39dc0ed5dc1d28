// Beam search through the TS API (`llm.beamSearch`, `useBeamSearch`) and the server (vLLM's `use_beam_search`,
// `length_penalty`, `early_stopping` with `n` as the beam width), against the HF transformers reference the Rust
// test also uses (crates/engine/tests/fixtures/beam_smollm2.json, made by scripts/make_beam_reference.py).

import { readFileSync } from 'node:fs';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { LLM, ValidationError } from '../src/index.js';
import { type RunningServer, startServer } from '../src/server/serve.js';
import { TEST_ENGINE, readResponse } from './helpers.js';

interface HfCase {
  prompt: string;
  chat: boolean;
  prompt_ids: number[];
  beam_width: number;
  length_penalty: number;
  early_stopping: boolean | 'never';
  max_tokens: number;
  stop?: string[];
  beams: { token_ids: number[]; score: number; text: string }[];
}

const fixture = JSON.parse(readFileSync(new URL('../crates/engine/tests/fixtures/beam_smollm2.json', import.meta.url), 'utf8')) as {
  cases: HfCase[];
};
// Stop-string cases only match HF when the stop strings are passed too; they get their own test.
const plainCases = fixture.cases.filter((c) => !c.chat && c.stop === undefined);
const stopCases = fixture.cases.filter((c) => !c.chat && c.stop !== undefined);

let llm: LLM;
let server: RunningServer;

beforeAll(async () => {
  // Exact mode: the fixture is HF's beam search in f32.
  const engine = { ...TEST_ENGINE, kvCacheBytes: 128 << 20, maxNumSeqs: 32, cpuPrecision: 'exact' as const };
  llm = await LLM.create(engine);
  server = await startServer({ port: 0, engine, servedModelName: ['smol'], log: () => {} });
}, 120_000);

afterAll(async () => {
  await server?.shutdown('test over');
  llm?.close();
});

async function post(path: string, body: unknown): ReturnType<typeof readResponse> {
  return readResponse(await fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }));
}

describe('llm.beamSearch', () => {
  it('returns HF transformers beams, best first, for several widths at once', async () => {
    const cases = plainCases.filter((c) => c.early_stopping === false && c.length_penalty === 1);
    expect(cases.length).toBeGreaterThanOrEqual(6);
    const outs = await Promise.all(
      cases.map((c) => llm.beamSearch([c.prompt_ids], { beamWidth: c.beam_width, maxTokens: c.max_tokens }).then((o) => o[0]!)),
    );
    for (const [c, out] of cases.map((c, i) => [c, outs[i]!] as const)) {
      expect(out.outputs.map((o) => o.index)).toEqual(c.beams.map((_, i) => i));
      expect(out.outputs.map((o) => o.tokenIds)).toEqual(c.beams.map((b) => b.token_ids));
      for (const [o, b] of out.outputs.map((o, i) => [o, c.beams[i]!] as const)) {
        expect(o.cumulativeLogprob! / o.tokenIds.length).toBeCloseTo(b.score, 3);
        expect(o.text).toBe(llm.detokenize(o.tokenIds, { skipSpecialTokens: true }));
        expect(['stop', 'length']).toContain(o.finishReason);
      }
      // Metrics as for any request: a beam search's first step sets the first-token time.
      expect(out.metrics?.firstTokenTime).toBeTypeOf('number');
      expect(out.metrics!.firstTokenTime!).toBeLessThanOrEqual(out.metrics!.finishedTime!);
      expect(out.metrics!.numGenerationTokens).toBeGreaterThan(0);
    }
  }, 120_000);

  it('stop strings end beams where HF StopStringCriteria does', async () => {
    expect(stopCases.length).toBeGreaterThanOrEqual(4);
    for (const c of stopCases) {
      const [out] = await llm.beamSearch([c.prompt_ids], {
        beamWidth: c.beam_width,
        maxTokens: c.max_tokens,
        lengthPenalty: c.length_penalty,
        earlyStopping: c.early_stopping,
        stop: c.stop,
      });
      expect(out!.outputs.map((o) => o.tokenIds)).toEqual(c.beams.map((b) => b.token_ids));
      for (const [o, b] of out!.outputs.map((o, i) => [o, c.beams[i]!] as const)) {
        // vLLM's rule: the text is cut where the stop string that ended the beam begins.
        if (o.finishReason === 'stop' && typeof o.stopReason === 'string') {
          expect(b.text.startsWith(o.text)).toBe(true);
          expect(o.text).not.toContain(o.stopReason);
        }
      }
    }
  }, 120_000);

  it('lengthPenalty and earlyStopping reach the engine', async () => {
    const c = plainCases.find((x) => x.early_stopping === 'never' && x.length_penalty < 0)!;
    const [out] = await llm.beamSearch([c.prompt_ids], {
      beamWidth: c.beam_width,
      maxTokens: c.max_tokens,
      lengthPenalty: c.length_penalty,
      earlyStopping: c.early_stopping,
    });
    expect(out!.outputs.map((o) => o.tokenIds)).toEqual(c.beams.map((b) => b.token_ids));
  }, 60_000);

  it('useBeamSearch in generate() returns the best n of bestOf beams', async () => {
    const c = plainCases.find((x) => x.beam_width === 4 && x.early_stopping === false && x.length_penalty === 1)!;
    const [out] = await llm.generate([c.prompt_ids], { useBeamSearch: true, n: 2, bestOf: 4, maxTokens: c.max_tokens });
    expect(out!.outputs.map((o) => o.tokenIds)).toEqual(c.beams.slice(0, 2).map((b) => b.token_ids));
  }, 60_000);

  it('refuses bad widths and combinations beam search does not implement', async () => {
    const bad: [() => Promise<unknown>, string][] = [
      [() => llm.beamSearch('x', { beamWidth: 0 }), 'beamWidth'],
      [() => llm.beamSearch('x', { beamWidth: 129 }), 'beamWidth'],
      [() => llm.generate('x', { lengthPenalty: 0.5 }), 'lengthPenalty'],
      [() => llm.generate('x', { earlyStopping: true }), 'earlyStopping'],
      [() => llm.generate('x', { useBeamSearch: true, n: 2, logprobs: 1 }), 'logprobs'],
      [() => llm.generate('x', { useBeamSearch: true, n: 2, structuredOutputs: { regex: 'a+' } }), 'structuredOutputs'],
      [() => llm.generate('x', { useBeamSearch: true, n: 2, minTokens: 2 }), 'minTokens'],
      [() => llm.generate('x', { useBeamSearch: true, n: 2, earlyStopping: 'sometimes' as never }), 'earlyStopping'],
    ];
    for (const [call, param] of bad) {
      const err = await call().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, param).toBeInstanceOf(ValidationError);
      expect((err as ValidationError).param).toBe(param);
    }
  });
});

describe('server use_beam_search', () => {
  const c = plainCases.find((x) => x.beam_width === 4 && x.early_stopping === false && x.length_penalty === 1)!;

  it('/v1/completions returns the n beams as choices, streamed or not', async () => {
    const body = { model: 'smol', prompt: c.prompt_ids, n: 4, use_beam_search: true, max_tokens: c.max_tokens };
    const res = await post('/v1/completions', body);
    expect(res.status, res.text).toBe(200);
    const choices = res.json.choices as { index: number; text: string; finish_reason: string }[];
    expect(choices.map((ch) => ch.index)).toEqual([0, 1, 2, 3]);
    expect(choices.map((ch) => ch.text)).toEqual(c.beams.map((b) => llm.detokenize(b.token_ids, { skipSpecialTokens: true })));
    expect(res.json.usage.completion_tokens).toBe(c.beams.reduce((s, b) => s + b.token_ids.length, 0));

    const streamed = await post('/v1/completions', { ...body, stream: true });
    expect(streamed.status).toBe(200);
    const texts = new Map<number, string>();
    for (const line of streamed.text.split('\n')) {
      if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
      for (const ch of JSON.parse(line.slice(6)).choices as { index: number; text: string }[]) {
        texts.set(ch.index, (texts.get(ch.index) ?? '') + ch.text);
      }
    }
    expect([...texts.keys()].sort()).toEqual([0, 1, 2, 3]);
    expect([0, 1, 2, 3].map((i) => texts.get(i))).toEqual(choices.map((ch) => ch.text));
  }, 60_000);

  it('/v1/chat/completions takes use_beam_search, length_penalty and early_stopping', async () => {
    const res = await post('/v1/chat/completions', {
      model: 'smol',
      messages: [{ role: 'user', content: 'What is 2+2?' }],
      n: 2,
      use_beam_search: true,
      length_penalty: 0.5,
      early_stopping: 'never',
      max_tokens: 12,
    });
    expect(res.status, res.text).toBe(200);
    expect(res.json.choices).toHaveLength(2);
    expect(res.json.choices[0].message.content.length).toBeGreaterThan(0);
  }, 60_000);

  it('400s for what beam search cannot do', async () => {
    const cases: [string, Record<string, unknown>, string][] = [
      ['/v1/completions', { n: 129 }, 'n'],
      ['/v1/completions', { n: 2, best_of: 4 }, 'best_of'],
      ['/v1/completions', { n: 2, logprobs: 1 }, 'logprobs'],
      ['/v1/completions', { n: 2, guided_regex: 'a+' }, 'guided_regex'],
      ['/v1/completions', { n: 2, early_stopping: 'sometimes' }, 'early_stopping'],
      ['/v1/chat/completions', { n: 2, logprobs: true }, 'logprobs'],
      ['/v1/chat/completions', { n: 2, min_tokens: 3 }, 'min_tokens'],
    ];
    for (const [path, extra, param] of cases) {
      const base = path === '/v1/completions' ? { prompt: 'x' } : { messages: [{ role: 'user', content: 'x' }] };
      const res = await post(path, { ...base, max_tokens: 4, use_beam_search: true, ...extra });
      expect(res.status, `${path} ${JSON.stringify(extra)}: ${res.text}`).toBe(400);
      expect(res.json.error.param, res.text).toBe(param);
      expect(res.json.error.type).toBe('invalid_request_error');
    }
    // length_penalty and early_stopping without use_beam_search ask for something that would not happen.
    const res = await post('/v1/completions', { prompt: 'x', max_tokens: 2, length_penalty: 0.5 });
    expect(res.status).toBe(400);
    expect(res.json.error.param).toBe('length_penalty');
  });
});
