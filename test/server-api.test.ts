/**
 * The HTTP API through `app.request()` (no socket): every endpoint, every error path (status, OpenAI error shape,
 * the offending field in `param`), streaming chunk formats, load shedding and the CLI flag parsing. One engine for
 * the whole file (maxNumSeqs 2, so two long requests fill it and a third has to wait).
 */

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { LLM } from '../src/index.js';
import { createApp } from '../src/server/app.js';
import { parseServeArgs } from '../src/server/options.js';
import { createTestLLM, waitFor } from './helpers.js';

const MODEL = 'smol-test';
let llm: LLM;
let app: ReturnType<typeof createApp>['app'];

beforeAll(async () => {
  llm = await createTestLLM({ maxNumSeqs: 2 });
  ({ app } = createApp(llm, { servedModelName: [MODEL, 'alias'], disableLogRequests: true }));
});

afterAll(() => llm?.close());

type AnyApp = { request: (path: string, init?: RequestInit) => Response | Promise<Response> };

function post(path: string, body: unknown, headers: Record<string, string> = {}, on: AnyApp = app): Promise<Response> {
  return Promise.resolve(
    on.request(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    }),
  );
}

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

async function expectError(res: Response, status: number, param: string | null, code?: string): Promise<ErrorBody> {
  const body = (await res.json()) as ErrorBody;
  expect(res.status, JSON.stringify(body)).toBe(status);
  expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(typeof body.error.message).toBe('string');
  expect(body.error.param).toBe(param);
  if (code !== undefined) expect(body.error.code).toBe(code);
  return body;
}

/** The `data:` payloads of an SSE body, in order. */
function sseData(text: string): string[] {
  expect(text.endsWith('\n\n')).toBe(true);
  return text
    .split('\n\n')
    .filter((block) => block.length > 0)
    .map((block) => {
      expect(block.startsWith('data: ')).toBe(true);
      return block.slice('data: '.length);
    });
}

/** Reads SSE events from a live response until `count` data events arrived. */
async function readEvents(reader: ReadableStreamDefaultReader<Uint8Array>, count: number): Promise<string[]> {
  const decoder = new TextDecoder();
  let buffer = '';
  const events: string[] = [];
  while (events.length < count) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let at: number;
    while ((at = buffer.indexOf('\n\n')) >= 0) {
      events.push(buffer.slice(0, at).replace(/^data: /, ''));
      buffer = buffer.slice(at + 2);
    }
  }
  return events;
}

describe('models, health, version, openapi', () => {
  it('GET /v1/models lists the served names with max_model_len', async () => {
    const res = await app.request('/v1/models');
    expect(res.status).toBe(200);
    const body = (await res.json()) as { object: string; data: { id: string; object: string; owned_by: string; max_model_len: number }[] };
    expect(body.object).toBe('list');
    expect(body.data.map((m) => m.id)).toEqual([MODEL, 'alias']);
    expect(body.data[0]).toMatchObject({ object: 'model', owned_by: 'pagedllm', max_model_len: llm.modelInfo.maxModelLen });
  });

  it('GET /v1/models/{id} answers for served names and 404s for others', async () => {
    expect(((await (await app.request(`/v1/models/${MODEL}`)).json()) as { id: string }).id).toBe(MODEL);
    await expectError(await app.request('/v1/models/gpt-4'), 404, 'model', 'model_not_found');
  });

  it('GET /health is 200 and /version names the package version', async () => {
    expect((await app.request('/health')).status).toBe(200);
    const v = (await (await app.request('/version')).json()) as { version: string };
    expect(v.version).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('GET /openapi.json is an OpenAPI 3.1 document with paths and request schemas from zod', async () => {
    const res = await app.request('/openapi.json');
    expect(res.status).toBe(200);
    const doc = JSON.parse(await res.text()) as {
      openapi: string;
      paths: Record<string, unknown>;
      components: { schemas: Record<string, { properties?: Record<string, unknown> }> };
    };
    expect(doc.openapi).toBe('3.1.0');
    for (const p of ['/v1/models', '/v1/completions', '/v1/chat/completions', '/tokenize', '/detokenize', '/health', '/metrics']) {
      expect(doc.paths).toHaveProperty([p]);
    }
    expect(Object.keys(doc.components.schemas.CompletionRequest!.properties!)).toEqual(
      expect.arrayContaining(['prompt', 'max_tokens', 'logprobs', 'echo', 'top_k', 'stream_options']),
    );
    expect(Object.keys(doc.components.schemas.ChatCompletionRequest!.properties!)).toEqual(
      expect.arrayContaining(['messages', 'max_completion_tokens', 'top_logprobs']),
    );
  });

  it('unknown paths are OpenAI-shaped 404s', async () => {
    await expectError(await app.request('/v2/nothing'), 404, null, 'not_found');
  });

  it('echoes X-Request-Id and generates one when absent', async () => {
    const res = await post('/v1/completions', { prompt: 'Hi', max_tokens: 1 }, { 'x-request-id': 'my-req-1' });
    expect(res.headers.get('x-request-id')).toBe('my-req-1');
    expect(((await res.json()) as { id: string }).id).toBe('cmpl-my-req-1');
    const other = await app.request('/health');
    expect(other.headers.get('x-request-id')).toMatch(/^[0-9a-f]{32}$/);
  });
});

describe('POST /v1/completions', () => {
  interface Completion {
    id: string;
    object: string;
    model: string;
    choices: { index: number; text: string; finish_reason: string | null; logprobs: any; stop_reason: unknown }[];
    usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  }

  it('completes a string prompt with usage (max_tokens defaults to 16)', async () => {
    const res = await post('/v1/completions', { model: MODEL, prompt: 'The capital of France is', temperature: 0, ignore_eos: true });
    expect(res.status).toBe(200);
    const body = (await res.json()) as Completion;
    expect(body.object).toBe('text_completion');
    expect(body.id).toMatch(/^cmpl-/);
    expect(body.model).toBe(MODEL);
    expect(body.choices).toHaveLength(1);
    expect(body.choices[0]!.finish_reason).toBe('length');
    expect(body.usage.completion_tokens).toBe(16);
    expect(body.usage.prompt_tokens).toBe(llm.tokenize('The capital of France is').length);
    expect(body.usage.total_tokens).toBe(body.usage.prompt_tokens + 16);
  });

  it('accepts the alias name and no model at all', async () => {
    const a = (await (await post('/v1/completions', { model: 'alias', prompt: 'Hi', max_tokens: 1 })).json()) as Completion;
    expect(a.model).toBe('alias');
    const b = (await (await post('/v1/completions', { prompt: 'Hi', max_tokens: 1 })).json()) as Completion;
    expect(b.model).toBe(MODEL);
  });

  it('n > 1 and prompt lists: choices indexed prompt * n + sample', async () => {
    const res = await post('/v1/completions', { prompt: ['One', 'Two'], n: 2, max_tokens: 2, ignore_eos: true, seed: 1 });
    const body = (await res.json()) as Completion;
    expect(body.choices.map((c) => c.index)).toEqual([0, 1, 2, 3]);
    expect(body.usage.completion_tokens).toBe(8);
  });

  it('best_of: the n best of best_of candidates by cumulative log-prob; refused below n and with streaming', async () => {
    const req = { prompt: 'Once upon a time', max_tokens: 4, ignore_eos: true, seed: 5, temperature: 1, logprobs: 0 };
    type Lp = { token_logprobs: number[] };
    const all = (await (await post('/v1/completions', { ...req, n: 2 })).json()) as Completion;
    const scored = all.choices.map((c) => ({ text: c.text, sum: (c.logprobs as Lp).token_logprobs.reduce((x, y) => x + y, 0) }));
    const best = scored[0]!.sum >= scored[1]!.sum ? scored[0]! : scored[1]!;
    const one = (await (await post('/v1/completions', { ...req, n: 1, best_of: 2 })).json()) as Completion;
    expect(one.choices).toHaveLength(1);
    expect(one.choices[0]!.index).toBe(0);
    expect(one.choices[0]!.text).toBe(best.text);
    const below = await post('/v1/completions', { ...req, n: 2, best_of: 1 });
    expect(below.status).toBe(400);
    expect(((await below.json()) as ErrorBody).error.param).toBe('best_of');
    const streamed = await post('/v1/completions', { ...req, best_of: 2, stream: true });
    expect(streamed.status).toBe(400);
    expect(((await streamed.json()) as ErrorBody).error.message).toMatch(/cannot be streamed/);
  });

  it('token-id prompts: one array and arrays of arrays', async () => {
    const ids = llm.tokenize('Hello there');
    const one = (await (await post('/v1/completions', { prompt: ids, max_tokens: 2, ignore_eos: true })).json()) as Completion;
    expect(one.usage.prompt_tokens).toBe(ids.length);
    const many = (await (await post('/v1/completions', { prompt: [ids, [ids[0]!]], max_tokens: 1 })).json()) as Completion;
    expect(many.choices).toHaveLength(2);
    expect(many.usage.prompt_tokens).toBe(ids.length + 1);
  });

  it('logprobs use the completions format', async () => {
    const body = (await (await post('/v1/completions', { prompt: 'Hello, my name is', max_tokens: 3, logprobs: 2, temperature: 0, ignore_eos: true })).json()) as Completion;
    const lp = body.choices[0]!.logprobs as { tokens: string[]; token_logprobs: number[]; top_logprobs: Record<string, number>[]; text_offset: number[] };
    expect(lp.tokens).toHaveLength(3);
    expect(lp.tokens.join('')).toBe(body.choices[0]!.text);
    expect(lp.token_logprobs.every((x) => typeof x === 'number' && x <= 0)).toBe(true);
    for (const top of lp.top_logprobs) {
      expect(Object.keys(top).length).toBeGreaterThanOrEqual(1);
      expect(Object.keys(top).length).toBeLessThanOrEqual(3);
    }
    // Greedy: the chosen token is the most likely one.
    expect(lp.top_logprobs[0]![lp.tokens[0]!]).toBeCloseTo(Math.max(...Object.values(lp.top_logprobs[0]!)), 5);
    expect(lp.text_offset).toEqual([0, lp.tokens[0]!.length, lp.tokens[0]!.length + lp.tokens[1]!.length]);
  });

  it('echo prepends the prompt, with prompt log-probs when logprobs is set', async () => {
    const prompt = 'Hello, my name is';
    const plain = (await (await post('/v1/completions', { prompt, max_tokens: 2, echo: true })).json()) as Completion;
    expect(plain.choices[0]!.text.startsWith(prompt)).toBe(true);
    const body = (await (await post('/v1/completions', { prompt, max_tokens: 2, echo: true, logprobs: 1, ignore_eos: true })).json()) as Completion;
    const lp = body.choices[0]!.logprobs as { tokens: string[]; token_logprobs: (number | null)[]; top_logprobs: unknown[]; text_offset: number[] };
    const promptLen = llm.tokenize(prompt).length;
    expect(lp.tokens).toHaveLength(promptLen + 2);
    expect(lp.token_logprobs[0]).toBeNull();
    expect(lp.top_logprobs[0]).toBeNull();
    expect(lp.token_logprobs.slice(1).every((x) => typeof x === 'number')).toBe(true);
    expect(lp.tokens.slice(0, promptLen).join('')).toBe(prompt);
    expect(lp.text_offset[0]).toBe(0);
    expect(lp.text_offset[promptLen]).toBe(prompt.length);
  });

  it('prompt_logprobs (vLLM extra) returns per-position dicts', async () => {
    const body = (await (await post('/v1/completions', { prompt: 'a b c', max_tokens: 1, prompt_logprobs: 1 })).json()) as {
      choices: { prompt_logprobs: (Record<string, { logprob: number; rank: number; decoded_token: string }> | null)[] }[];
    };
    const pl = body.choices[0]!.prompt_logprobs;
    expect(pl[0]).toBeNull();
    const ids = llm.tokenize('a b c');
    expect(pl).toHaveLength(ids.length);
    expect(pl[1]![String(ids[1])]).toMatchObject({ decoded_token: expect.any(String) });
  });

  it('stop strings end the text (finish_reason stop, stop_reason the string)', async () => {
    const base = (await (await post('/v1/completions', { prompt: 'Count: 1, 2, 3,', max_tokens: 12, temperature: 0, ignore_eos: true })).json()) as Completion;
    const text = base.choices[0]!.text;
    const stop = text.trim().slice(0, 2).trim();
    expect(stop.length).toBeGreaterThan(0);
    const res = (await (await post('/v1/completions', { prompt: 'Count: 1, 2, 3,', max_tokens: 12, temperature: 0, stop: [stop] })).json()) as Completion;
    expect(res.choices[0]!.finish_reason).toBe('stop');
    expect(res.choices[0]!.stop_reason).toBe(stop);
    expect(res.choices[0]!.text).toBe(text.slice(0, text.indexOf(stop)));
  });

  it('streams SSE chunks, ends with [DONE], and sends a usage chunk with include_usage', async () => {
    const res = await post('/v1/completions', { prompt: 'Hi', max_tokens: 4, n: 2, stream: true, stream_options: { include_usage: true }, ignore_eos: true });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const events = sseData(await res.text());
    expect(events.at(-1)).toBe('[DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e) as Completion & { usage: Completion['usage'] | null });
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual({ prompt_tokens: 2 * 0 + llm.tokenize('Hi').length, completion_tokens: 8, total_tokens: llm.tokenize('Hi').length + 8 });
    for (const chunk of chunks.slice(0, -1)) {
      expect(chunk.object).toBe('text_completion');
      expect(chunk.usage).toBeNull();
      expect(chunk.choices).toHaveLength(1);
    }
    for (const index of [0, 1]) {
      const mine = chunks.slice(0, -1).filter((c) => c.choices[0]!.index === index);
      expect(mine.at(-1)!.choices[0]!.finish_reason).toBe('length');
      expect(mine.slice(0, -1).every((c) => c.choices[0]!.finish_reason === null)).toBe(true);
    }
  });

  it('streams without include_usage: no usage field', async () => {
    const events = sseData(await (await post('/v1/completions', { prompt: 'Hi', max_tokens: 2, stream: true, echo: true })).text());
    const first = JSON.parse(events[0]!) as Record<string, unknown> & { choices: { text: string }[] };
    expect(first).not.toHaveProperty('usage');
    expect(first.choices[0]!.text.startsWith('Hi')).toBe(true);
  });

  it('a client disconnect mid-stream aborts the engine request', async () => {
    const res = await post('/v1/completions', { prompt: 'Tell me a story', max_tokens: 300, stream: true, ignore_eos: true });
    const reader = res.body!.getReader();
    expect(await readEvents(reader, 2)).toHaveLength(2);
    expect(llm.stats().numRunning).toBe(1);
    await reader.cancel();
    expect(await waitFor(() => llm.stats().numRunning === 0 && llm.stats().kvBlocksInUse === 0, 5000)).toBe(true);
  });
});

describe('POST /v1/chat/completions', () => {
  const messages = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: [{ type: 'text', text: 'Say hi' }] },
  ];

  it('answers with an assistant message, usage and chat-format logprobs', async () => {
    // Greedy, so the test does not depend on what a random sample hits (a sampled <|im_end|> under ignore_eos
    // shows in the log-probs but not in the text, which skips special tokens).
    const res = await post('/v1/chat/completions', { model: MODEL, messages, max_tokens: 4, logprobs: true, top_logprobs: 2, ignore_eos: true, temperature: 0 });
    expect(res.status).toBe(200);
    const body = (await res.json()) as {
      object: string;
      id: string;
      choices: { message: { role: string; content: string }; finish_reason: string; logprobs: { content: { token: string; logprob: number; bytes: number[]; top_logprobs: unknown[] }[] } }[];
      usage: { prompt_tokens: number; completion_tokens: number };
    };
    expect(body.object).toBe('chat.completion');
    expect(body.id).toMatch(/^chatcmpl-/);
    expect(body.choices[0]!.message.role).toBe('assistant');
    expect(body.choices[0]!.finish_reason).toBe('length');
    const content = body.choices[0]!.logprobs.content;
    expect(content).toHaveLength(4);
    expect(content.map((t) => t.token).join('')).toBe(body.choices[0]!.message.content);
    expect(content[0]!.bytes).toEqual([...Buffer.from(content[0]!.token)]);
    expect(content[0]!.top_logprobs).toHaveLength(2);
    // The prompt is what /tokenize reports for the same messages.
    const tok = (await (await post('/tokenize', { model: MODEL, messages })).json()) as { count: number };
    expect(body.usage.prompt_tokens).toBe(tok.count);
    expect(body.usage.completion_tokens).toBe(4);
  });

  it('log-prob bytes rebuild characters split across tokens; such tokens show as bytes:\\xNN', async () => {
    // Greedy on this prompt the default model answers with emoji, each spread over three byte-level tokens.
    const res = await post('/v1/chat/completions', { messages: [{ role: 'user', content: 'Send me a heart emoji' }], max_tokens: 6, logprobs: true, top_logprobs: 1, temperature: 0 });
    const body = (await res.json()) as { choices: { message: { content: string }; logprobs: { content: { token: string; bytes: number[]; top_logprobs: { token: string; bytes: number[] }[] }[] } }[] };
    const { message, logprobs } = body.choices[0]!;
    const partial = logprobs.content.filter((t) => t.token.startsWith('bytes:'));
    expect(partial.length).toBeGreaterThan(0);
    for (const t of partial) {
      expect(t.token).toBe(`bytes:${t.bytes.map((b) => `\\x${b.toString(16).padStart(2, '0')}`).join('')}`);
    }
    // The raw bytes joined are exactly the text; no U+FFFD anywhere.
    expect(Buffer.from(logprobs.content.flatMap((t) => t.bytes)).toString('utf8')).toBe(message.content);
    expect(JSON.stringify(logprobs)).not.toContain('\ufffd');
    for (const t of logprobs.content) expect(t.top_logprobs[0]!.bytes.length).toBeGreaterThan(0);
  });

  it('n > 1 gives n choices', async () => {
    const body = (await (await post('/v1/chat/completions', { messages, max_tokens: 2, n: 2, ignore_eos: true })).json()) as { choices: { index: number }[] };
    expect(body.choices.map((c) => c.index)).toEqual([0, 1]);
  });

  it('streams a first role delta, content deltas, finish_reason on the last content chunk, usage, [DONE]', async () => {
    const res = await post('/v1/chat/completions', { messages, max_tokens: 5, stream: true, stream_options: { include_usage: true }, ignore_eos: true });
    const events = sseData(await res.text());
    expect(events.at(-1)).toBe('[DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e) as { object: string; choices: { delta: Record<string, unknown>; finish_reason: string | null }[]; usage?: unknown });
    expect(chunks[0]!.object).toBe('chat.completion.chunk');
    expect(chunks[0]!.choices[0]!.delta).toEqual({ role: 'assistant', content: '' });
    const usageChunk = chunks.at(-1)!;
    expect(usageChunk.choices).toEqual([]);
    expect(usageChunk.usage).toMatchObject({ completion_tokens: 5 });
    const content = chunks.slice(1, -1);
    expect(content.at(-1)!.choices[0]!.finish_reason).toBe('length');
    expect(content.slice(0, -1).every((c) => c.choices[0]!.finish_reason === null && typeof c.choices[0]!.delta.content === 'string')).toBe(true);
  });

  it('tool messages and an explicit chat_template are rendered (with --trust-request-chat-template)', async () => {
    const request = {
      messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null }, { role: 'tool', content: 'result', tool_call_id: 't1' }],
      chat_template: '{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}',
      add_generation_prompt: false,
    };
    // Untrusted by default: refused on /tokenize and on chat, naming the field.
    await expectError(await post('/tokenize', request), 400, 'chat_template', 'untrusted_chat_template');
    await expectError(await post('/v1/chat/completions', { ...request, max_tokens: 1 }), 400, 'chat_template', 'untrusted_chat_template');
    const { app: trusting } = createApp(llm, { disableLogRequests: true, trustRequestChatTemplate: true });
    const res = await post('/tokenize', request, {}, trusting);
    const body = (await res.json()) as { tokens: number[] };
    expect(llm.detokenize(body.tokens)).toBe('[user:x][assistant:][tool:result]');
  });
});

describe('tokenize and detokenize', () => {
  it('round-trips text through /tokenize and /detokenize', async () => {
    const text = 'Paged attention makes KV caches cheap.';
    const res = await post('/tokenize', { model: MODEL, prompt: text });
    const body = (await res.json()) as { tokens: number[]; count: number; max_model_len: number };
    expect(body.count).toBe(body.tokens.length);
    expect(body.tokens).toEqual(llm.tokenize(text));
    expect(body.max_model_len).toBe(llm.modelInfo.maxModelLen);
    const back = (await (await post('/detokenize', { model: MODEL, tokens: body.tokens })).json()) as { prompt: string };
    expect(back.prompt).toBe(text);
  });

  it('rejects token ids outside the vocabulary and unknown models', async () => {
    await expectError(await post('/detokenize', { tokens: [llm.modelInfo.vocabSize] }), 400, 'tokens');
    await expectError(await post('/tokenize', { model: 'nope', prompt: 'x' }), 404, 'model', 'model_not_found');
    await expectError(await post('/tokenize', { messages: [] }), 400, 'messages');
  });
});

describe('errors', () => {
  it('400 names the field for schema violations', async () => {
    await expectError(await post('/v1/completions', { prompt: 'x', top_p: 3 }), 400, 'top_p');
    await expectError(await post('/v1/completions', { prompt: 'x', temperature: -1 }), 400, 'temperature');
    await expectError(await post('/v1/completions', { prompt: 'x', max_tokens: 'many' }), 400, 'max_tokens');
    await expectError(await post('/v1/completions', { prompt: 'x', stop: [''] }), 400, 'stop[0]');
    await expectError(await post('/v1/completions', { max_tokens: 1 }), 400, 'prompt');
    await expectError(await post('/v1/chat/completions', { max_tokens: 1 }), 400, 'messages');
    await expectError(await post('/v1/chat/completions', { messages: [{ role: 'wizard', content: 'x' }] }), 400, 'messages[0].role');
    await expectError(await post('/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], top_logprobs: 2 }), 400, 'top_logprobs');
  });

  it('unknown fields are ignored like OpenAI', async () => {
    const res = await post('/v1/completions', { prompt: 'x', max_tokens: 1, some_future_field: { a: 1 } });
    expect(res.status).toBe(200);
  });

  it('engine-side validation errors are mapped with snake_case params', async () => {
    const vocab = llm.modelInfo.vocabSize;
    const e1 = await expectError(await post('/v1/completions', { prompt: 'x', max_tokens: 1, logit_bias: { [vocab]: 1 } }), 400, 'logit_bias');
    expect(e1.error.message).toContain('`logit_bias`');
    await expectError(await post('/v1/completions', { prompt: 'x', max_tokens: 1, stop_token_ids: [vocab + 5] }), 400, 'stop_token_ids');
    await expectError(await post('/v1/completions', { prompt: 'x', max_tokens: 2, min_tokens: 5 }), 400, 'min_tokens');
  });

  it('malformed JSON and non-object bodies are 400s', async () => {
    await expectError(await post('/v1/completions', '{"prompt": '), 400, null, 'invalid_json');
    await expectError(await post('/v1/chat/completions', ''), 400, null, 'invalid_json');
    await expectError(await post('/v1/completions', '[1, 2]'), 400, null, 'invalid_json');
  });

  it('404 for an unknown model', async () => {
    await expectError(await post('/v1/completions', { model: 'gpt-4', prompt: 'x' }), 404, 'model', 'model_not_found');
    await expectError(await post('/v1/chat/completions', { model: 'gpt-4', messages: [{ role: 'user', content: 'x' }] }), 404, 'model', 'model_not_found');
  });

  it('token ids outside the vocabulary are 400s naming the prompt', async () => {
    const e = await expectError(await post('/v1/completions', { prompt: [1, llm.modelInfo.vocabSize + 1], max_tokens: 1 }), 400, 'prompt');
    expect(e.error.message).toContain('position 1');
  });

  it('prompt + max_tokens beyond the context is a 400 context_length_exceeded', async () => {
    const max = llm.modelInfo.maxModelLen;
    await expectError(await post('/v1/completions', { prompt: 'Hi', max_tokens: max }), 400, 'prompt', 'context_length_exceeded');
    const long = Array.from({ length: max + 10 }, () => 100);
    await expectError(await post('/v1/completions', { prompt: long, max_tokens: 1 }), 400, 'prompt', 'context_length_exceeded');
    await expectError(
      await post('/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }], max_completion_tokens: max }),
      400,
      'messages',
      'context_length_exceeded',
    );
  });

  it('unknown response_format types and non-text parts are refused, never ignored; tool_choice without its prerequisites is a 400', async () => {
    const messages = [{ role: 'user', content: 'x' }];
    await expectError(await post('/v1/chat/completions', { messages, response_format: { type: 'xml' } }), 400, 'response_format.type');
    const tools = [{ type: 'function', function: { name: 'f', parameters: {} } }];
    // tools default to tool_choice "auto", which needs --enable-auto-tool-choice (vLLM's rule); "required" needs tools.
    const auto = await expectError(await post('/v1/chat/completions', { messages, tools }), 400, 'tool_choice');
    expect(auto.error.message).toContain('--enable-auto-tool-choice');
    await expectError(await post('/v1/chat/completions', { messages, tool_choice: 'required' }), 400, 'tool_choice');
    await expectError(
      await post('/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }),
      400,
      'messages[0].content[0]',
    );
    await expectError(await post('/v1/completions', { prompt: 'x', suffix: 'y' }), 400, 'suffix');
    // The supported values pass.
    const ok = await post('/v1/chat/completions', { messages, response_format: { type: 'text' }, tools, tool_choice: 'none', max_tokens: 1 });
    expect(ok.status).toBe(200);
  });

  it('401 for a missing or wrong API key; /health, /version, /metrics, / stay open', async () => {
    const { app: secured } = createApp(llm, { apiKey: 'sk-secret', disableLogRequests: true });
    const missing = await expectError(await post('/v1/completions', { prompt: 'x' }, {}, secured), 401, null, 'invalid_api_key');
    expect(missing.error.type).toBe('invalid_request_error');
    await expectError(await post('/v1/completions', { prompt: 'x' }, { authorization: 'Bearer sk-wrong' }, secured), 401, null, 'invalid_api_key');
    await expectError(await post('/tokenize', { prompt: 'x' }, { authorization: 'Bearer sk-secre' }, secured), 401, null);
    await expectError(await secured.request('/v1/models'), 401, null);
    const ok = await secured.request('/v1/models', { headers: { authorization: 'Bearer sk-secret' } });
    expect(ok.status).toBe(200);
    for (const open of ['/health', '/version', '/metrics', '/', '/openapi.json']) {
      expect((await secured.request(open)).status, open).toBe(200);
    }
  });

  it('413 for bodies above the limit', async () => {
    const { app: small } = createApp(llm, { bodyLimitBytes: 1024, disableLogRequests: true });
    await expectError(await post('/v1/completions', { prompt: 'x'.repeat(2000) }, {}, small), 413, null, 'request_too_large');
    expect((await post('/v1/completions', { prompt: 'x', max_tokens: 1 }, {}, small)).status).toBe(200);
  });

  it('503 + Retry-After when more requests wait than --max-waiting allows', async () => {
    const { app: shedding, state } = createApp(llm, { maxWaiting: 0, disableLogRequests: true });
    const long = { prompt: 'Once upon a time', max_tokens: 400, stream: true, ignore_eos: true };
    // Two long streams fill the engine (maxNumSeqs 2). Each must have its first token before the next request
    // arrives: until then it counts as waiting, and with --max-waiting 0 the next one would be refused.
    const startLong = async () => {
      const res = await post('/v1/completions', long, {}, shedding);
      expect(res.status).toBe(200);
      const reader = res.body!.getReader();
      expect(await readEvents(reader, 1)).toHaveLength(1);
      return reader;
    };
    const a = await startLong();
    const b = await startLong();
    expect(state.admission.numWaiting).toBe(0);
    // ... so a third one waits for a slot ...
    const waiting = post('/v1/completions', { prompt: 'Hi', max_tokens: 2 }, {}, shedding);
    expect(await waitFor(() => state.admission.numWaiting === 1, 5000)).toBe(true);
    // ... and a fourth is refused instead of queueing.
    const refused = await post('/v1/completions', { prompt: 'Hi', max_tokens: 2 }, {}, shedding);
    expect(refused.headers.get('retry-after')).toBe('1');
    await expectError(refused, 503, null, 'server_overloaded');
    await a.cancel();
    await b.cancel();
    expect((await waiting).status).toBe(200);
    expect(await waitFor(() => llm.stats().numRunning === 0, 5000)).toBe(true);
    expect(state.admission.numWaiting).toBe(0);
    // A request with several prompts is admitted (or refused) as a whole and releases every slot it took.
    expect((await post('/v1/completions', { prompt: ['a', 'b', 'c'], max_tokens: 1 }, {}, shedding)).status).toBe(200);
    expect(state.admission.numWaiting).toBe(0);
  });
});

describe('metrics', () => {
  it('exposes the vLLM metric names with a model_name label', async () => {
    const res = await app.request('/metrics');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await res.text();
    const label = `{model_name="${MODEL}"}`;
    for (const name of ['vllm:num_requests_running', 'vllm:num_requests_waiting', 'vllm:kv_cache_usage_perc', 'pagedllm:kv_cache_waste_perc']) {
      expect(text).toContain(`${name}${label} 0`);
    }
    const value = (name: string) => Number(new RegExp(`^${name}\\{model_name="${MODEL}"\\} (\\S+)$`, 'm').exec(text)?.[1]);
    expect(value('vllm:prompt_tokens_total')).toBeGreaterThan(0);
    expect(value('vllm:generation_tokens_total')).toBeGreaterThan(0);
    expect(value('vllm:prefix_cache_queries_total')).toBeGreaterThanOrEqual(value('vllm:prefix_cache_hits_total'));
    expect(text).toMatch(new RegExp(`vllm:request_success_total\\{model_name="${MODEL}",finished_reason="length"\\} [1-9]`));
    expect(text).toMatch(new RegExp(`vllm:request_success_total\\{model_name="${MODEL}",finished_reason="abort"\\} [1-9]`));
    for (const h of [
      'vllm:time_to_first_token_seconds',
      'vllm:inter_token_latency_seconds',
      'vllm:e2e_request_latency_seconds',
      'vllm:request_queue_time_seconds',
      'vllm:request_prompt_tokens',
      'vllm:request_generation_tokens',
    ]) {
      expect(value(`${h}_count`), h).toBeGreaterThan(0);
    }
  });
});

describe('pagedllm serve flags', () => {
  it('parses vLLM-named flags into server and engine options', () => {
    const o = parseServeArgs(
      ['--port', '0', '--host', '0.0.0.0', '--served-model-name', 'a', 'b', '--max-model-len', '256', '--max-num-seqs', '4',
        '--no-enable-prefix-caching', '--max-waiting', '3', '--max-body-bytes', '2048', '--shutdown-timeout', '2.5',
        '--disable-log-requests', '--chat-template', '{{ messages }}', '--seed', '7'],
      {},
    )!;
    expect(o).toMatchObject({
      port: 0,
      host: '0.0.0.0',
      servedModelName: ['a', 'b'],
      maxWaiting: 3,
      bodyLimitBytes: 2048,
      shutdownTimeoutMs: 2500,
      disableLogRequests: true,
      chatTemplate: '{{ messages }}',
      apiKey: null,
      engine: { maxModelLen: 256, maxNumSeqs: 4, enablePrefixCaching: false, seed: 7 },
    });
    expect(parseServeArgs([], { PAGEDLLM_API_KEY: 'k' })!.apiKey).toBe('k');
    expect(
      parseServeArgs(['--device', 'cuda:1', '--gpu-memory-utilization', '0.8', '--enforce-eager', '--dtype', 'half'], {})!
        .engine,
    ).toMatchObject({
      device: 'cuda:1',
      gpuMemoryUtilization: 0.8,
      enforceEager: true,
      dtype: 'half',
    });
    expect(parseServeArgs(['--dtype', 'float32'], {})!.engine.dtype).toBe('float32');
    expect(() => parseServeArgs(['--dtype', 'int8'], {})).toThrow(/--dtype must be one of auto, bfloat16, float16, half, float32, float/);
    expect(() => parseServeArgs(['--gpu-memory-utilization', '1.2'], {})).toThrow(/gpu-memory-utilization/);
    expect(() => parseServeArgs(['--port', 'x'], {})).toThrow(/--port/);
    expect(() => parseServeArgs(['--bogus'], {})).toThrow(/bogus/);
    expect(() => parseServeArgs(['--chat-template', '/no/such/file'], {})).toThrow(/chat-template/);
  });
});

describe('engine gone', () => {
  it('/health is 503 and generation is 503 once the engine is closed', async () => {
    llm.close();
    await expectError(await app.request('/health'), 503, null, 'engine_closed');
    await expectError(await post('/v1/completions', { prompt: 'x', max_tokens: 1 }), 503, null, 'engine_closed');
  });
});
