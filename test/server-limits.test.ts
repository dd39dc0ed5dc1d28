/**
 * Per-request caps and refusals of the HTTP server (issue "Hardening", items 1, 3, 4 and 8), through
 * `app.request()`: every cap answers a 400 in OpenAI's error shape naming the field; known-but-unimplemented
 * fields are refused with `unsupported_parameter` instead of being dropped; request chat templates need
 * `--trust-request-chat-template` and even then run under fuel and output limits; `cache_salt` is accepted on
 * completions and chat and isolates the prefix cache; and the new flags parse.
 */

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { LLM } from '../src/index.js';
import { createApp } from '../src/server/app.js';
import {
  DEFAULT_MAX_WAITING,
  MAX_JSON_DEPTH,
  MAX_LOGIT_BIAS_ENTRIES,
  MAX_MESSAGES,
  MAX_N,
  MAX_PROMPTS_PER_REQUEST,
  MAX_STOP_STRINGS,
  MAX_STOP_STRING_LENGTH,
  jsonDepth,
} from '../src/server/limits.js';
import { parseServeArgs, resolveServerOptions } from '../src/server/options.js';
import { UNSUPPORTED_FIELDS } from '../src/server/unsupported-fields.js';
import { createTestLLM, waitFor } from './helpers.js';

let llm: LLM;
let app: ReturnType<typeof createApp>['app'];
let trusting: ReturnType<typeof createApp>['app'];

beforeAll(async () => {
  llm = await createTestLLM();
  ({ app } = createApp(llm, { disableLogRequests: true, maxRequestPromptTokens: 300 }));
  ({ app: trusting } = createApp(llm, { disableLogRequests: true, trustRequestChatTemplate: true }));
});

afterAll(() => llm?.close());

type AnyApp = typeof app;

function post(path: string, body: unknown, on: AnyApp = app): Promise<Response> {
  return Promise.resolve(
    on.request(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    }),
  );
}

async function expectError(res: Response, status: number, param: string | null, code?: string | null): Promise<string> {
  const body = (await res.json()) as { error: { message: string; type: string; param: string | null; code: string | null } };
  expect(res.status, JSON.stringify(body)).toBe(status);
  expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(body.error.param).toBe(param);
  if (code !== undefined) expect(body.error.code).toBe(code);
  return body.error.message;
}

const user = [{ role: 'user', content: 'Hi' }];

describe('caps (400 naming the field)', () => {
  it('prompts per completions request', async () => {
    const prompts = Array.from({ length: MAX_PROMPTS_PER_REQUEST + 1 }, () => 'x');
    const msg = await expectError(await post('/v1/completions', { prompt: prompts, max_tokens: 1 }), 400, 'prompt');
    expect(msg).toContain(String(MAX_PROMPTS_PER_REQUEST));
    const idPrompts = Array.from({ length: MAX_PROMPTS_PER_REQUEST + 1 }, () => [1]);
    await expectError(await post('/v1/completions', { prompt: idPrompts, max_tokens: 1 }), 400, 'prompt');
  });

  it('messages per chat request (and /tokenize)', async () => {
    const messages = Array.from({ length: MAX_MESSAGES + 1 }, () => ({ role: 'user', content: 'x' }));
    const msg = await expectError(await post('/v1/chat/completions', { messages, max_tokens: 1 }), 400, 'messages');
    expect(msg).toContain(String(MAX_MESSAGES));
    await expectError(await post('/tokenize', { messages }), 400, 'messages');
  });

  it('stop strings: count and length', async () => {
    const many = Array.from({ length: MAX_STOP_STRINGS + 1 }, (_, i) => `s${i}`);
    await expectError(await post('/v1/completions', { prompt: 'x', stop: many }), 400, 'stop');
    await expectError(await post('/v1/chat/completions', { messages: user, stop: ['y'.repeat(MAX_STOP_STRING_LENGTH + 1)] }), 400, 'stop[0]');
    await expectError(await post('/v1/completions', { prompt: 'x', stop: 'y'.repeat(MAX_STOP_STRING_LENGTH + 1) }), 400, 'stop');
  });

  it('n, logprobs, top_logprobs, prompt_logprobs (OpenAI: 20)', async () => {
    await expectError(await post('/v1/completions', { prompt: 'x', n: MAX_N + 1 }), 400, 'n');
    await expectError(await post('/v1/completions', { prompt: 'x', logprobs: 21 }), 400, 'logprobs');
    await expectError(await post('/v1/chat/completions', { messages: user, logprobs: true, top_logprobs: 21 }), 400, 'top_logprobs');
    await expectError(await post('/v1/completions', { prompt: 'x', prompt_logprobs: 21 }), 400, 'prompt_logprobs');
  });

  it('logit_bias size', async () => {
    const bias = Object.fromEntries(Array.from({ length: MAX_LOGIT_BIAS_ENTRIES + 1 }, (_, i) => [String(i), 1]));
    const msg = await expectError(await post('/v1/completions', { prompt: 'x', logit_bias: bias }), 400, 'logit_bias');
    expect(msg).toContain(String(MAX_LOGIT_BIAS_ENTRIES));
  });

  it('nesting depth of JSON bodies, found before parsing', async () => {
    const deep = '{"prompt": "x", "user": ' + '['.repeat(MAX_JSON_DEPTH + 1) + ']'.repeat(MAX_JSON_DEPTH + 1) + '}';
    const msg = await expectError(await post('/v1/completions', deep), 400, null, 'invalid_json');
    expect(msg).toContain(`${MAX_JSON_DEPTH} levels`);
    // Brackets inside strings do not count; escaped quotes do not end a string.
    expect(jsonDepth('{"a": "[[[[\\"[[["}')).toBe(1);
    expect(jsonDepth('[[],[[]]]')).toBe(3);
    // A body nested to the limit is judged by the schema, not refused for depth.
    const atLimit = { prompt: 'x', max_tokens: 1, chat_template_kwargs: {} as unknown };
    let v: unknown = 1;
    for (let i = 0; i < MAX_JSON_DEPTH - 2; i++) v = [v];
    atLimit.chat_template_kwargs = { v };
    expect((await post('/v1/completions', atLimit)).status).toBe(200);
  });

  it('total prompt tokens per request (--max-request-prompt-tokens)', async () => {
    // 300 tokens allowed in all: four prompts of ~100 tokens are too many together, one alone is fine.
    const long = 'one two three four five six seven eight nine ten '.repeat(10);
    expect(llm.tokenize(long).length).toBeGreaterThan(75);
    expect(llm.tokenize(long).length).toBeLessThan(300);
    expect((await post('/v1/completions', { prompt: long, max_tokens: 1 })).status).toBe(200);
    const msg = await expectError(await post('/v1/completions', { prompt: [long, long, long, long], max_tokens: 1 }), 400, 'prompt', 'too_many_prompt_tokens');
    expect(msg).toContain('--max-request-prompt-tokens');
    const ids = Array.from({ length: 301 }, () => 1);
    await expectError(await post('/v1/completions', { prompt: ids, max_tokens: 1 }), 400, 'prompt', 'too_many_prompt_tokens');
    const messages = Array.from({ length: 5 }, () => ({ role: 'user', content: long }));
    await expectError(await post('/v1/chat/completions', { messages, max_tokens: 1 }), 400, 'messages', 'too_many_prompt_tokens');
  });

  it('--max-waiting has a finite default', () => {
    expect(resolveServerOptions().maxWaiting).toBe(DEFAULT_MAX_WAITING);
    expect(Number.isFinite(DEFAULT_MAX_WAITING)).toBe(true);
  });
});

describe('known-but-unimplemented fields are refused, never dropped', () => {
  const values: Record<string, unknown> = {
    // guided_json / regex / choice / grammar and structured_outputs are implemented (test/structured-outputs.test.ts
    // also covers guided_decoding_backend values other than ours).
    guided_whitespace_pattern: ' ',
    bad_words: ['x'],
    allowed_token_ids: [1, 2],
    logits_processors: ['p'],
    truncate_prompt_tokens: 10,
    spaces_between_special_tokens: false,
    return_tokens_as_token_ids: true,
    prompt_embeds: 'AAAA',
    priority: 5,
    kv_transfer_params: { a: 1 },
    documents: [{ text: 'd' }],
    mm_processor_kwargs: { a: 1 },
    modalities: ['text', 'audio'],
    audio: { voice: 'x' },
    prediction: { type: 'content', content: 'x' },
    web_search_options: {},
    functions: [{ name: 'f' }],
    function_call: 'auto',
    reasoning_effort: 'low',
  };

  it('every listed field gets 400 unsupported_parameter naming it', async () => {
    expect(UNSUPPORTED_FIELDS.map((f) => f.field).sort()).toEqual(Object.keys(values).sort());
    for (const entry of UNSUPPORTED_FIELDS) {
      for (const endpoint of entry.endpoints) {
        const base = endpoint === 'chat' ? { messages: user } : { prompt: 'x' };
        const path = endpoint === 'chat' ? '/v1/chat/completions' : '/v1/completions';
        const msg = await expectError(await post(path, { ...base, max_tokens: 1, [entry.field]: values[entry.field] }), 400, entry.field, 'unsupported_parameter');
        expect(msg).toContain('not supported');
      }
    }
  });

  it('neutral values and nulls are accepted', async () => {
    const neutral = { use_beam_search: false, priority: 0, spaces_between_special_tokens: true, guided_json: null, bad_words: [] };
    expect((await post('/v1/completions', { prompt: 'x', max_tokens: 1, ...neutral })).status).toBe(200);
    expect((await post('/v1/chat/completions', { messages: user, max_tokens: 1, ...neutral, modalities: ['text'], function_call: 'none' })).status).toBe(200);
  });
});

describe('request chat templates', () => {
  it('are refused unless trusted', async () => {
    const tmpl = '{% for m in messages %}{{ m.content }}{% endfor %}';
    const msg = await expectError(await post('/v1/chat/completions', { messages: user, chat_template: tmpl, max_tokens: 1 }), 400, 'chat_template', 'untrusted_chat_template');
    expect(msg).toContain('--trust-request-chat-template');
    expect((await post('/v1/chat/completions', { messages: user, chat_template: tmpl, max_tokens: 1 }, trusting)).status).toBe(200);
  });

  it('run under fuel and output-size limits even when trusted', async () => {
    const cases = [
      ['{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}', 'out of fuel'],
      ['{{ messages | tojson(indent=100000000) }}', 'indent is limited'],
      ["{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", 'exceeds'],
    ] as const;
    for (const [tmpl, why] of cases) {
      const started = Date.now();
      const msg = await expectError(await post('/tokenize', { messages: user, chat_template: tmpl }, trusting), 400, 'messages', 'chat_template_error');
      expect(msg).toContain(why);
      expect(Date.now() - started).toBeLessThan(10_000);
    }
    // The engine still serves afterwards.
    expect((await post('/v1/chat/completions', { messages: user, max_tokens: 2 }, trusting)).status).toBe(200);
  });
});

describe('cache_salt', () => {
  it('is accepted on completions and chat, validated, and keeps tenants apart in the prefix cache', async () => {
    const shared = 'The quick brown fox jumps over the lazy dog. '.repeat(8);
    const hitsOf = () => llm.stats().prefixCacheHits;
    const run = async (salt: string | undefined) => {
      const before = hitsOf();
      const finished = llm.stats().requestsFinishedTotal;
      const res = await post('/v1/completions', { prompt: shared, max_tokens: 1, temperature: 0, ...(salt ? { cache_salt: salt } : {}) });
      expect(res.status).toBe(200);
      // Engine stats are published after the step that finished the request; wait for that step's numbers.
      expect(await waitFor(() => llm.stats().requestsFinishedTotal > finished)).toBe(true);
      return hitsOf() - before;
    };
    await run('tenant-a');
    expect(await run('tenant-a')).toBeGreaterThan(0); // same tenant: cached blocks reused
    expect(await run('tenant-b')).toBe(0); // another tenant: no sharing
    expect(await run(undefined)).toBe(0); // no salt: no sharing with salted requests
    const chat = await post('/v1/chat/completions', { messages: user, max_tokens: 1, cache_salt: 'tenant-a' });
    expect(chat.status).toBe(200);
    await expectError(await post('/v1/completions', { prompt: 'x', cache_salt: '' }), 400, 'cache_salt');
    await expectError(await post('/v1/completions', { prompt: 'x', cache_salt: 'x'.repeat(257) }), 400, 'cache_salt');
    await expectError(await post('/v1/chat/completions', { messages: user, cache_salt: 7 }), 400, 'cache_salt');
  });
});

describe('flags', () => {
  it('parse the hardening flags', () => {
    const o = parseServeArgs(['--trust-request-chat-template', '--prefix-caching-hash-algo', 'xxhash', '--max-request-prompt-tokens', '1000'], {})!;
    expect(o).toMatchObject({ trustRequestChatTemplate: true, maxRequestPromptTokens: 1000, engine: { prefixCachingHashAlgo: 'xxhash' } });
    const d = parseServeArgs([], {})!;
    expect(d.trustRequestChatTemplate).toBe(false);
    expect(d.maxWaiting).toBe(DEFAULT_MAX_WAITING);
    expect(() => parseServeArgs(['--prefix-caching-hash-algo', 'md5'], {})).toThrow(/sha256, xxhash/);
    expect(() => parseServeArgs(['--max-request-prompt-tokens', '0'], {})).toThrow(/at least 1/);
  });
});
