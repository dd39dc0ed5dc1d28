/**
 * Token-id clients: `--skip-tokenizer-init` (the engine loads no tokenizer; /v1/completions takes token-id prompts
 * and answers with token ids; every text feature is a 400 naming the flag) and `return_token_ids` (vLLM's field:
 * token ids next to the text on completions and chat). The default model is served twice, with and without its
 * tokenizer, and the two must generate the same greedy tokens.
 */

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { LLM } from '../src/index.js';
import { createApp } from '../src/server/app.js';
import { parseServeArgs } from '../src/server/options.js';
import { createTestLLM, readResponse } from './helpers.js';

let withTok: LLM;
let noTok: LLM;
let textApp: ReturnType<typeof createApp>['app'];
let idApp: ReturnType<typeof createApp>['app'];

beforeAll(async () => {
  withTok = await createTestLLM({ maxNumSeqs: 4 });
  noTok = await createTestLLM({ maxNumSeqs: 4, skipTokenizerInit: true });
  ({ app: textApp } = createApp(withTok, { servedModelName: ['m'], disableLogRequests: true }));
  ({ app: idApp } = createApp(noTok, { servedModelName: ['m'], disableLogRequests: true, engine: { skipTokenizerInit: true } }));
});

afterAll(() => {
  withTok?.close();
  noTok?.close();
});

type AnyApp = typeof textApp;

async function post(app: AnyApp, path: string, body: unknown): ReturnType<typeof readResponse> {
  return readResponse(await app.request(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }));
}

function sseChunks(text: string): any[] {
  return text
    .split('\n\n')
    .filter((b) => b.startsWith('data: ') && b !== 'data: [DONE]')
    .map((b) => JSON.parse(b.slice('data: '.length)));
}

async function expect400(app: AnyApp, path: string, body: unknown, param: string): Promise<string> {
  const r = await post(app, path, body);
  expect(r.status, r.text).toBe(400);
  expect(r.json.error.param).toBe(param);
  expect(r.json.error.type).toBe('invalid_request_error');
  return r.json.error.message as string;
}

describe('--skip-tokenizer-init', () => {
  it('is a serve flag that reaches the engine options', () => {
    expect(parseServeArgs(['--skip-tokenizer-init'])!.engine.skipTokenizerInit).toBe(true);
    expect(parseServeArgs([])!.engine.skipTokenizerInit).toBeUndefined();
    expect(noTok.modelInfo.hasTokenizer).toBe(false);
    expect(noTok.modelInfo.hasChatTemplate).toBe(false);
    expect(withTok.modelInfo.hasTokenizer).toBe(true);
  });

  it('generates the same greedy token ids as the engine with its tokenizer, returned as token_ids', async () => {
    const prompt = await withTok.tokenizeAsync('The capital of France is', { addSpecialTokens: true });
    const req = { model: 'm', prompt, max_tokens: 12, temperature: 0, ignore_eos: true };
    const ids = await post(idApp, '/v1/completions', req);
    expect(ids.status, ids.text).toBe(200);
    const choice = ids.json.choices[0];
    expect(choice.text).toBe('');
    expect(choice.prompt_token_ids).toEqual(prompt);
    expect(choice.token_ids).toHaveLength(12);
    expect(ids.json.usage).toEqual({ prompt_tokens: prompt.length, completion_tokens: 12, total_tokens: prompt.length + 12 });

    const text = await post(textApp, '/v1/completions', { ...req, return_token_ids: true });
    expect(text.status, text.text).toBe(200);
    expect(text.json.choices[0].token_ids).toEqual(choice.token_ids);
    expect(text.json.choices[0].prompt_token_ids).toEqual(prompt);
    expect(withTok.detokenize(choice.token_ids)).toBe(text.json.choices[0].text);
    // Without the field, a server with a tokenizer adds nothing.
    const plain = await post(textApp, '/v1/completions', req);
    expect(plain.json.choices[0].token_ids).toBeUndefined();
  });

  it('streams token_ids per chunk and prompt_token_ids on each choice’s first chunk; several prompts and n', async () => {
    const prompts = [
      [1, 504, 3458, 282],
      [1, 2000, 30, 7, 99],
    ];
    const req = { model: 'm', prompt: prompts, n: 2, max_tokens: 6, temperature: 0.8, seed: 3, ignore_eos: true };
    const whole = await post(idApp, '/v1/completions', req);
    expect(whole.status, whole.text).toBe(200);
    const streamed = await post(idApp, '/v1/completions', { ...req, stream: true, stream_options: { include_usage: true } });
    expect(streamed.status).toBe(200);
    const byChoice = new Map<number, number[]>();
    const firstSeen = new Set<number>();
    for (const chunk of sseChunks(streamed.text)) {
      for (const ch of chunk.choices) {
        expect(ch.text).toBe('');
        if (!firstSeen.has(ch.index)) {
          firstSeen.add(ch.index);
          expect(ch.prompt_token_ids).toEqual(prompts[Math.floor(ch.index / 2)]);
        } else {
          expect(ch.prompt_token_ids).toBeUndefined();
        }
        byChoice.set(ch.index, [...(byChoice.get(ch.index) ?? []), ...ch.token_ids]);
      }
    }
    expect([...byChoice.keys()].sort()).toEqual([0, 1, 2, 3]);
    for (const c of whole.json.choices) {
      expect(c.token_ids).toHaveLength(6);
      expect(c.prompt_token_ids).toEqual(prompts[Math.floor(c.index / 2)]);
      // Seeded sampling: the streamed run drew the same tokens.
      expect(byChoice.get(c.index)).toEqual(c.token_ids);
    }
  });

  it('names log-prob tokens token_id:N (there is no text to show)', async () => {
    const r = await post(idApp, '/v1/completions', { model: 'm', prompt: [1, 504, 3458], max_tokens: 3, temperature: 0, logprobs: 2 });
    expect(r.status, r.text).toBe(200);
    const lp = r.json.choices[0].logprobs;
    expect(lp.tokens).toEqual(r.json.choices[0].token_ids.map((t: number) => `token_id:${t}`));
    for (const top of lp.top_logprobs) {
      expect(Object.keys(top).length).toBeGreaterThanOrEqual(1);
      for (const k of Object.keys(top)) expect(k).toMatch(/^token_id:\d+$/);
    }
  });

  it('refuses every text feature with a 400 that names the field and the flag', async () => {
    const m = await expect400(idApp, '/v1/completions', { model: 'm', prompt: 'hello' }, 'prompt');
    expect(m).toContain('--skip-tokenizer-init');
    await expect400(idApp, '/v1/completions', { model: 'm', prompt: ['a', 'b'] }, 'prompt');
    await expect400(idApp, '/v1/completions', { model: 'm', prompt: [1, 2, 3], echo: true }, 'echo');
    await expect400(idApp, '/v1/completions', { model: 'm', prompt: [1, 2, 3], stop: ['\n'] }, 'stop');
    await expect400(idApp, '/v1/completions', { model: 'm', prompt: [1, 2, 3], response_format: { type: 'json_object' } }, 'structured_outputs');
    await expect400(idApp, '/v1/chat/completions', { model: 'm', messages: [{ role: 'user', content: 'hi' }] }, 'messages');
    await expect400(idApp, '/tokenize', { model: 'm', prompt: 'hi' }, 'prompt');
    await expect400(idApp, '/detokenize', { model: 'm', tokens: [1, 2] }, 'tokens');
    // Out-of-vocabulary ids are still the engine's clear 400, and the engine keeps serving.
    await expect400(idApp, '/v1/completions', { model: 'm', prompt: [1, 10_000_000] }, 'prompt');
    const ok = await post(idApp, '/v1/completions', { model: 'm', prompt: [1, 2, 3], max_tokens: 2 });
    expect(ok.status).toBe(200);
    // stop_token_ids need no tokenizer.
    const stopped = await post(idApp, '/v1/completions', {
      model: 'm',
      prompt: [1, 504, 3458],
      max_tokens: 8,
      temperature: 0,
      stop_token_ids: [ok.json.choices[0].token_ids[0]],
    });
    expect(stopped.status, stopped.text).toBe(200);
  });
});

describe('return_token_ids on chat completions', () => {
  const messages = [{ role: 'user', content: 'Name a colour.' }];

  it('adds prompt_token_ids to the response and token_ids to each choice', async () => {
    const tok = await post(textApp, '/tokenize', { model: 'm', messages });
    const r = await post(textApp, '/v1/chat/completions', { model: 'm', messages, max_tokens: 8, temperature: 0, return_token_ids: true });
    expect(r.status, r.text).toBe(200);
    expect(r.json.prompt_token_ids).toEqual(tok.json.tokens);
    const choice = r.json.choices[0];
    expect(choice.token_ids).toHaveLength(r.json.usage.completion_tokens);
    expect(withTok.detokenize(choice.token_ids, { skipSpecialTokens: true })).toBe(choice.message.content);
  });

  it('streams the same ids, the prompt with the first chunk', async () => {
    const req = { model: 'm', messages, max_tokens: 8, temperature: 0, return_token_ids: true };
    const whole = await post(textApp, '/v1/chat/completions', req);
    const streamed = await post(textApp, '/v1/chat/completions', { ...req, stream: true });
    const chunks = sseChunks(streamed.text);
    expect(chunks[0].prompt_token_ids).toEqual(whole.json.prompt_token_ids);
    const ids = chunks.flatMap((c) => c.choices.flatMap((ch: any) => ch.token_ids ?? []));
    expect(ids).toEqual(whole.json.choices[0].token_ids);
  });
});
