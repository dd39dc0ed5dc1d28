/**
 * Structured outputs on the default model (SmolLM2-135M), end to end: the TS API (`structuredOutputs` json, regex,
 * choice, grammar; n > 1; streaming; typed errors), 200 generated JSON Schemas whose every output must parse and
 * validate (ajv), and the server (OpenAI `response_format`, vLLM `structured_outputs` and `guided_*`, the official
 * SDK's `chat.completions.parse` with `zodResponseFormat`, 400s naming the field).
 */

import { Ajv } from 'ajv';
import addFormatsModule from 'ajv-formats';
import OpenAI from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';

import { LLM, ValidationError } from '../src/index.js';
import { type RunningServer, startServer } from '../src/server/serve.js';
import { rng, TEST_ENGINE } from './helpers.js';

// ajv-formats ships CommonJS: its default export arrives wrapped under ESM.
const addFormats = ((addFormatsModule as unknown as { default?: typeof addFormatsModule }).default ?? addFormatsModule) as unknown as (
  ajv: Ajv,
) => Ajv;

let llm: LLM;
let server: RunningServer;
let client: OpenAI;

beforeAll(async () => {
  // Room for a wide batch: the 200-schema test submits every case at once (and preempts when the cache fills).
  const engine = { ...TEST_ENGINE, kvCacheBytes: 256 << 20, maxNumSeqs: 32, maxModelLen: 1024 };
  llm = await LLM.create(engine);
  server = await startServer({ port: 0, engine, servedModelName: ['smol'], log: () => {} });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
}, 120_000);

afterAll(async () => {
  await server?.shutdown('test over');
  await llm?.close();
});

const chatPrompt = (task: string) =>
  llm.applyChatTemplate([
    { role: 'system', content: 'You are a helpful assistant that answers in JSON.' },
    { role: 'user', content: task },
  ]);

describe('TS API', () => {
  it('generate() with a JSON Schema returns JSON that validates', async () => {
    const schema = {
      type: 'object',
      properties: { name: { type: 'string', maxLength: 20 }, age: { type: 'integer', minimum: 0, maximum: 120 } },
      required: ['name', 'age'],
      additionalProperties: false,
    };
    const [out] = await llm.generate(chatPrompt('Describe a person.'), {
      temperature: 0,
      maxTokens: 100,
      structuredOutputs: { json: schema },
    });
    const value = JSON.parse(out!.outputs[0]!.text) as Record<string, unknown>;
    expect(new Ajv().validate(schema, value)).toBe(true);
    // Keys in the schema's order.
    expect(Object.keys(value)).toEqual(['name', 'age']);
    expect(out!.outputs[0]!.finishReason).toBe('stop');
  });

  it('regex, choice and Lark grammar outputs match', async () => {
    const prompt = chatPrompt('Say something.');
    const [re, choice, grammar, jsonText] = await Promise.all([
      llm.generate(prompt, { temperature: 0, maxTokens: 40, structuredOutputs: { regex: '(red|green|blue)-[0-9]{2,4}' } }),
      llm.generate(prompt, { temperature: 0, maxTokens: 40, structuredOutputs: { choice: ['yes', 'no', 'maybe later'] } }),
      llm.generate(prompt, {
        temperature: 0,
        maxTokens: 60,
        structuredOutputs: { grammar: 'start: "(" item ("," item)* ")"\nitem: /[a-z]{1,6}/' },
      }),
      llm.generate(prompt, { temperature: 0, maxTokens: 60, structuredOutputs: { json: '{"type": "array", "items": {"type": "boolean"}, "maxItems": 3}' } }),
    ]);
    expect(re[0]!.outputs[0]!.text).toMatch(/^(red|green|blue)-[0-9]{2,4}$/);
    expect(['yes', 'no', 'maybe later']).toContain(choice[0]!.outputs[0]!.text);
    expect(grammar[0]!.outputs[0]!.text).toMatch(/^\([a-z]{1,6}(,[a-z]{1,6})*\)$/);
    const arr = JSON.parse(jsonText[0]!.outputs[0]!.text) as unknown[];
    expect(Array.isArray(arr) && arr.length <= 3 && arr.every((b) => typeof b === 'boolean')).toBe(true);
  });

  it('n > 1 with sampling: every sample obeys the constraint', async () => {
    const [out] = await llm.generate(chatPrompt('Pick a code.'), {
      n: 4,
      temperature: 1.2,
      seed: 7,
      maxTokens: 30,
      structuredOutputs: { regex: '[A-Z]{3}-[0-9]{3}' },
    });
    expect(out!.outputs).toHaveLength(4);
    for (const o of out!.outputs) expect(o.text).toMatch(/^[A-Z]{3}-[0-9]{3}$/);
  });

  it('streaming with a constraint, with log-probs of the masked distribution', async () => {
    const choices = ['absolutely', 'never'];
    let text = '';
    let positions = 0;
    for await (const d of llm.stream(chatPrompt('Answer.'), { temperature: 0, maxTokens: 30, logprobs: 5, structuredOutputs: { choice: choices } })) {
      for (const lp of d.logprobs ?? []) {
        if (choices.includes(text)) continue; // the EOS position
        // Every alternative with any probability continues a choice: masked-out tokens have probability 0.
        for (const top of lp.top) {
          if (top.logprob === null || top.logprob === -Infinity) continue;
          expect(choices.some((c) => c.startsWith(text + top.token)), `${text} + ${top.token}`).toBe(true);
        }
        text += lp.token;
        positions++;
      }
    }
    expect(choices).toContain(text);
    expect(positions).toBeGreaterThan(0);
  });

  it('invalid constraints are ValidationErrors naming the field', async () => {
    const prompt = 'x';
    const cases: [object, string][] = [
      [{ regex: '(unclosed' }, 'structuredOutputs.regex'],
      [{ grammar: 'start: undefined_rule' }, 'structuredOutputs.grammar'],
      [{ json: { type: 'no-such-type' } }, 'structuredOutputs.json'],
      [{ json: '{not json' }, 'structuredOutputs.json'],
      [{ regex: 'a', choice: ['b'] }, 'structuredOutputs'],
      [{}, 'structuredOutputs'],
    ];
    for (const [spec, param] of cases) {
      const err = await llm.generate(prompt, { structuredOutputs: spec }).catch((e: unknown) => e);
      expect(err, JSON.stringify(spec)).toBeInstanceOf(ValidationError);
      expect((err as ValidationError).param, JSON.stringify(spec)).toBe(param);
    }
    // The engine still serves.
    const [ok] = await llm.generate(prompt, { maxTokens: 2, temperature: 0 });
    expect(ok!.outputs[0]!.tokenIds.length).toBeGreaterThan(0);
  });
});

// ---- 200 random JSON Schemas ----

type Schema = Record<string, unknown>;

// Formats with a bounded length (a greedy 135M model spins on `time`'s unbounded fractional seconds until max_tokens).
// No `email`: llguidance accepts RFC 5321 forms (`a@host`, no TLD) that ajv-formats' stricter regex refuses.
const FORMATS = ['date', 'uuid', 'ipv4'];
const PATTERNS = ['^[a-z]{2,5}$', '^[A-Z][a-z]{1,8}$', '^[0-9]{3}-[0-9]{4}$', '^(foo|bar)[0-9]?$'];
const WORDS = ['alpha', 'beta', 'gamma', 'delta', 'red', 'blue', 'north', 'south', 'one', 'two'];

function randomSchema(r: () => number, depth: number): Schema {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const int = (lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
  const leaf = ['string', 'format', 'pattern', 'integer', 'number', 'boolean', 'enum', 'anyOf', 'null'];
  const kind = pick(depth >= 2 ? leaf : [...leaf, 'array', 'object', 'object']);
  switch (kind) {
    case 'string':
      return { type: 'string', minLength: int(0, 2), maxLength: int(3, 16) };
    case 'format':
      return { type: 'string', format: pick(FORMATS) };
    case 'pattern':
      return { type: 'string', pattern: pick(PATTERNS) };
    case 'integer':
      return { type: 'integer', minimum: int(-100, 0), maximum: int(1, 5000) };
    case 'number':
      // Integral-valued numbers: free fractional digits let the small model repeat zeros until max_tokens.
      return { type: 'number', minimum: 0, maximum: int(1, 1000), multipleOf: 1 };
    case 'boolean':
      return { type: 'boolean' };
    case 'null':
      return { type: 'null' };
    case 'enum': {
      const values = new Set<string | number>();
      const count = int(1, 4);
      while (values.size < count) values.add(r() < 0.7 ? pick(WORDS) : int(0, 99));
      return { enum: [...values] };
    }
    case 'anyOf':
      return { anyOf: [{ type: 'string', maxLength: 8 }, { type: 'integer', minimum: 0, maximum: 99 }] };
    case 'array':
      return { type: 'array', items: randomSchema(r, depth + 1), minItems: int(0, 1), maxItems: int(1, 3) };
    default:
      return randomObject(r, depth + 1);
  }
}

function randomObject(r: () => number, depth: number): Schema {
  const count = 1 + Math.floor(r() * 4);
  const properties: Record<string, Schema> = {};
  const required: string[] = [];
  for (let i = 0; i < count; i++) {
    const key = `${WORDS[Math.floor(r() * WORDS.length)]}_${i}`;
    properties[key] = randomSchema(r, depth);
    if (r() < 0.7) required.push(key);
  }
  return { type: 'object', properties, required, additionalProperties: false };
}

describe('random JSON Schemas', () => {
  it('200 generated schemas: every output parses and validates', async () => {
    const r = rng(20260412);
    const ajv = addFormats(new Ajv({ strict: false }));
    // Compact JSON: with flexible whitespace the greedy 135M model can loop on tabs and newlines until max_tokens
    // (the flexible path is covered by the tests above).
    const cases = Array.from({ length: 200 }, () => ({ schema: randomObject(r, 0), compact: true }));
    const outs = await Promise.all(
      cases.map(({ schema, compact }) =>
        llm.generate(chatPrompt(`Fill in this JSON schema with an example: ${JSON.stringify(schema)}`), {
          temperature: 0,
          // The 135M model's greedy loops ("0000...") are a model weakness, not a constraint one: discourage them.
          repetitionPenalty: 1.2,
          maxTokens: 320,
          structuredOutputs: { json: schema, disableAnyWhitespace: compact },
        }),
      ),
    );
    const failures: string[] = [];
    outs.forEach(([out], i) => {
      const o = out!.outputs[0]!;
      let value: unknown;
      try {
        value = JSON.parse(o.text);
      } catch (e) {
        failures.push(`#${i} (${o.finishReason}) does not parse: ${(e as Error).message}: ${o.text.slice(0, 200)}`);
        return;
      }
      if (!ajv.validate(cases[i]!.schema, value)) {
        failures.push(`#${i} invalid: ${ajv.errorsText()} in ${o.text.slice(0, 200)} for ${JSON.stringify(cases[i]!.schema)}`);
      }
    });
    expect(failures, failures.join('\n')).toEqual([]);
  }, 300_000);
});

// ---- the server ----

async function post(path: string, body: unknown): Promise<{ status: number; json: Record<string, any> }> {
  const res = await fetch(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, any> };
}

const messages = [{ role: 'user' as const, content: 'Give me a fact as JSON.' }];

describe('server', () => {
  it('official SDK: chat.completions.parse with zodResponseFormat', async () => {
    const Fact = z.object({ topic: z.string().max(30), confidence: z.number().min(0).max(1), tags: z.array(z.enum(['a', 'b', 'c'])).max(3) });
    const completion = await client.chat.completions.parse({
      model: 'smol',
      messages,
      temperature: 0,
      max_completion_tokens: 150,
      response_format: zodResponseFormat(Fact, 'fact'),
    });
    const parsed = completion.choices[0]!.message.parsed;
    expect(parsed).not.toBeNull();
    expect(Fact.parse(parsed)).toEqual(parsed);
  });

  it('response_format json_object gives a JSON object; streamed json_schema reassembles to valid JSON', async () => {
    const obj = await client.chat.completions.create({
      model: 'smol',
      messages: [{ role: 'user', content: 'Reply with a JSON object with one key, "fact", holding a short sentence.' }],
      temperature: 0,
      max_completion_tokens: 200,
      response_format: { type: 'json_object' },
      // vLLM's extra sampling field, sent through the SDK as-is: keeps the small model out of repetition loops.
      ...({ repetition_penalty: 1.2 } as object),
    });
    // The small model may fill the object until the token limit; a finished reply must parse as an object.
    const content = obj.choices[0]!.message.content!;
    expect(content.trimStart().startsWith('{')).toBe(true);
    if (obj.choices[0]!.finish_reason === 'stop') {
      const value = JSON.parse(content) as unknown;
      expect(typeof value === 'object' && value !== null && !Array.isArray(value)).toBe(true);
    }

    const schema = { type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'], additionalProperties: false };
    const stream = await client.chat.completions.create({
      model: 'smol',
      messages,
      temperature: 0,
      max_completion_tokens: 40,
      stream: true,
      response_format: { type: 'json_schema', json_schema: { name: 'ok', schema, strict: true } },
    });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    expect(new Ajv().validate(schema, JSON.parse(text))).toBe(true);
  });

  it('vLLM fields: structured_outputs, guided_regex, guided_choice (completions), guided_grammar, backend', async () => {
    const so = await post('/v1/chat/completions', { messages, temperature: 0, max_tokens: 30, structured_outputs: { regex: '[0-9]{4}' } });
    expect(so.status).toBe(200);
    expect(so.json.choices[0].message.content).toMatch(/^[0-9]{4}$/);

    const re = await post('/v1/completions', { prompt: 'The year was', temperature: 0, max_tokens: 10, guided_regex: ' 1[0-9]{3}', guided_decoding_backend: 'guidance' });
    expect(re.status).toBe(200);
    expect(re.json.choices[0].text).toMatch(/^ 1[0-9]{3}$/);

    const ch = await post('/v1/completions', { prompt: 'Is the sky blue?', temperature: 0, max_tokens: 10, n: 2, guided_choice: ['Yes', 'No'] });
    expect(ch.status).toBe(200);
    for (const c of ch.json.choices) expect(['Yes', 'No']).toContain(c.text);

    const gr = await post('/v1/chat/completions', { messages, temperature: 0, max_tokens: 30, guided_grammar: 'start: "A" | "B" "C"' });
    expect(gr.status).toBe(200);
    expect(['A', 'BC']).toContain(gr.json.choices[0].message.content);

    const gj = await post('/v1/completions', { prompt: 'JSON:', temperature: 0, max_tokens: 60, guided_json: { type: 'object', properties: { n: { type: 'integer' } }, required: ['n'] } });
    expect(gj.status).toBe(200);
    expect(Number.isInteger((JSON.parse(gj.json.choices[0].text) as { n: number }).n)).toBe(true);
  });

  it('400s name the field: invalid schema, regex, grammar; conflicting sources; other backends; unsupported options', async () => {
    const cases: [string, Record<string, unknown>, string, string | null][] = [
      ['/v1/chat/completions', { response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'nope' } } } }, 'response_format.json_schema.schema', null],
      ['/v1/chat/completions', { response_format: { type: 'xml' } }, 'response_format.type', null],
      ['/v1/completions', { guided_regex: '(' }, 'guided_regex', null],
      ['/v1/completions', { guided_json: '{"type":' }, 'guided_json', null],
      ['/v1/chat/completions', { structured_outputs: { grammar: 'start: missing' } }, 'structured_outputs.grammar', null],
      ['/v1/chat/completions', { structured_outputs: { regex: 'a', choice: ['b'] } }, 'structured_outputs', null],
      ['/v1/chat/completions', { structured_outputs: { json: {}, whitespace_pattern: ' ' } }, 'structured_outputs.whitespace_pattern', 'unsupported_parameter'],
      ['/v1/chat/completions', { response_format: { type: 'json_object' }, guided_regex: 'a' }, 'guided_regex', null],
      ['/v1/completions', { guided_regex: 'a', guided_decoding_backend: 'xgrammar' }, 'guided_decoding_backend', 'unsupported_parameter'],
      ['/v1/completions', { guided_json: {}, guided_whitespace_pattern: '\\s*' }, 'guided_whitespace_pattern', 'unsupported_parameter'],
      ['/v1/completions', { use_beam_search: true }, 'use_beam_search', 'unsupported_parameter'],
    ];
    for (const [path, extra, param, code] of cases) {
      const base = path === '/v1/completions' ? { prompt: 'x', max_tokens: 4 } : { messages, max_tokens: 4 };
      const res = await post(path, { ...base, ...extra });
      expect(res.status, JSON.stringify(extra)).toBe(400);
      expect(res.json.error.param, JSON.stringify(res.json)).toBe(param);
      if (code !== null) expect(res.json.error.code).toBe(code);
      expect(res.json.error.type).toBe('invalid_request_error');
    }
    const health = await fetch(`${server.url}/health`);
    expect(health.status).toBe(200);
  });
});
