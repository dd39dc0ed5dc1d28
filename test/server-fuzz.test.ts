/**
 * Property-based fuzzing of the HTTP surface (issue "Hardening": "Fuzzing the HTTP surface"). For every endpoint
 * that takes a body, fast-check builds bodies from the endpoint's own zod schema (through its JSON Schema, the one
 * /openapi.json publishes) and then breaks each one beyond the schema: a field of the wrong type, out of range,
 * NaN-like strings, a huge or non-finite number, deep nesting, a missing required field, a non-object body,
 * invalid UTF-8, truncated JSON. At least 1,000 bodies per endpoint, each answered 4xx in OpenAI's error shape
 * (never 5xx, never a hang), and afterwards a normal request still gives the right answer. Driven through
 * `app.request()` (no socket) so the whole file stays well under a minute.
 *
 * The schema-to-arbitrary translation is hand-written (below) because no maintained bridge from zod 4 to
 * fast-check exists; it covers the JSON Schema subset zod emits for these schemas.
 */

import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';

import type { LLM } from '../src/index.js';
import { createApp } from '../src/server/app.js';
import { chatRequestSchema } from '../src/server/schemas/chat.js';
import { completionRequestSchema } from '../src/server/schemas/completions.js';
import { detokenizeRequestSchema, tokenizeRequestSchema } from '../src/server/schemas/tokenize.js';
import { createTestLLM, waitFor } from './helpers.js';

const RUNS_PER_ENDPOINT = 1000;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
interface Schema {
  type?: string | string[];
  anyOf?: Schema[];
  enum?: Json[];
  const?: Json;
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  minItems?: number;
  maxItems?: number;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  propertyNames?: Schema;
  additionalProperties?: Schema | boolean;
  pattern?: string;
}

const toSchema = (s: z.ZodType) => z.toJSONSchema(s, { io: 'input', unrepresentable: 'any' }) as Schema;

/** A schema-shaped value (small: arrays of at most 3 items, short strings). */
function valid(s: Schema, depth = 0): fc.Arbitrary<Json> {
  if (s.anyOf) return fc.oneof(...s.anyOf.map((x) => valid(x, depth)));
  if (s.enum) return fc.constantFrom(...s.enum);
  if (s.const !== undefined) return fc.constant(s.const);
  const types = typeof s.type === 'string' ? [s.type] : (s.type ?? []);
  if (types.length > 1) return fc.oneof(...types.map((t) => valid({ ...s, type: t }, depth)));
  switch (types[0]) {
    case 'null':
      return fc.constant(null);
    case 'boolean':
      return fc.boolean();
    case 'integer':
      return fc.integer({ min: Math.max(s.minimum ?? -5, -5), max: Math.min(s.maximum ?? 50, 50) });
    case 'number': {
      const min = s.minimum ?? s.exclusiveMinimum ?? -2;
      return fc.double({ min: Math.max(min, -2), max: Math.min(s.maximum ?? 2, 2), noNaN: true, noDefaultInfinity: true }).filter((x) => s.exclusiveMinimum === undefined || x > s.exclusiveMinimum);
    }
    case 'string':
      if (s.pattern === '^\\d+$') return fc.integer({ min: 0, max: 100 }).map(String);
      return fc.string({ minLength: s.minLength ?? 0, maxLength: Math.min(s.maxLength ?? 12, 12) });
    case 'array':
      if (depth > 3) return fc.constant([]);
      return fc.array(valid(s.items ?? {}, depth + 1), { minLength: s.minItems ?? 0, maxLength: Math.min(s.maxItems ?? 3, 3) });
    case 'object': {
      if (depth > 3) return fc.constant({});
      const props = s.properties ?? {};
      const required = new Set(s.required ?? []);
      const record: Record<string, fc.Arbitrary<Json>> = {};
      for (const [k, v] of Object.entries(props)) record[k] = valid(v, depth + 1);
      if (Object.keys(props).length === 0 && typeof s.additionalProperties === 'object') {
        const key = s.propertyNames?.pattern === '^\\d+$' ? fc.integer({ min: 0, max: 100 }).map(String) : fc.string({ maxLength: 6 });
        return fc.dictionary(key, valid(s.additionalProperties, depth + 1), { maxKeys: 3 });
      }
      return fc.record(record, { requiredKeys: [...required] }) as fc.Arbitrary<Json>;
    }
    default:
      return fc.oneof(fc.string({ maxLength: 6 }), fc.integer(), fc.boolean(), fc.constant(null));
  }
}

/** The JSON types a schema accepts ('integer' counts as 'number' only when non-integers are also accepted). */
function acceptedTypes(s: Schema): Set<string> | null {
  if (s.anyOf) {
    const out = new Set<string>();
    for (const x of s.anyOf) {
      const t = acceptedTypes(x);
      if (t === null) return null;
      t.forEach((y) => out.add(y));
    }
    return out;
  }
  if (s.enum || s.const !== undefined) return new Set((s.enum ?? [s.const!]).map((v) => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v)));
  if (s.type === undefined) return null; // accepts anything
  return new Set(typeof s.type === 'string' ? [s.type] : s.type);
}

const deep = (n: number): Json => (n === 0 ? 1 : [deep(n - 1)]);
const NAN_LIKE = ['NaN', 'Infinity', '-Infinity', '1e999', '0x10', '', ' ', '\u0000', 'null', 'true', '１'];

/** Values that are certainly invalid for `s` (empty when `s` accepts anything). */
function invalidValues(s: Schema): Json[] {
  const accepted = acceptedTypes(s);
  const out: Json[] = [deep(100)]; // too deep for any body
  if (accepted === null) return out;
  const has = (t: string) => accepted.has(t) || (t === 'integer' && accepted.has('number'));
  if (!has('string')) out.push(...NAN_LIKE);
  if (!has('number') && !has('integer')) out.push(1e308, -1, 0, 3.5, Number.MAX_SAFE_INTEGER + 2);
  if (!has('boolean')) out.push(true, false);
  if (!has('array')) out.push([], [1, 'x']);
  if (!has('object')) out.push({}, { nested: { x: [] } });
  // Out of range for bounded numbers and strings, non-members of enums, fractions for integers.
  const leaves = s.anyOf ? s.anyOf : [s];
  const onlyIntegers = accepted.has('integer') && !accepted.has('number');
  if (onlyIntegers) out.push(1.5, 1e21);
  for (const leaf of leaves) {
    const lt = typeof leaf.type === 'string' ? leaf.type : undefined;
    if ((lt === 'integer' || lt === 'number') && accepted.size <= 2) {
      if (leaf.maximum !== undefined) out.push(leaf.maximum + 1, 1e300);
      if (leaf.minimum !== undefined) out.push(leaf.minimum - 1, -1e300);
      if (leaf.exclusiveMinimum !== undefined) out.push(leaf.exclusiveMinimum);
    }
    if (lt === 'string' && leaf.enum) out.push('not-a-member');
    if (lt === 'string' && leaf.maxLength !== undefined && !accepted.has('array')) out.push('z'.repeat(leaf.maxLength + 1));
  }
  return out;
}

interface Broken {
  /** The raw body bytes. */
  body: Uint8Array;
  what: string;
}

const enc = new TextEncoder();

/** Breaks a schema-valid object beyond its schema (one structural break, sometimes plus a byte-level one). */
function broken(schema: Schema): fc.Arbitrary<Broken> {
  const branches = schema.anyOf ?? [schema];
  return fc.oneof(
    ...branches.map((branch) => {
      const props = Object.entries(branch.properties ?? {}).filter(([, p]) => invalidValues(p).length > 1);
      const fieldBreak = fc.record({
        base: valid(branch),
        field: fc.constantFrom(...props.map(([k]) => k)),
        pick: fc.nat(),
      }).map(({ base, field, pick }) => {
        const options = invalidValues(branch.properties![field]!);
        const bad = options[pick % options.length]!;
        const obj = { ...(base as Record<string, Json>), [field]: bad };
        return { obj, what: `${field} = ${JSON.stringify(bad).slice(0, 40)}` };
      });
      const missing = (branch.required ?? []).filter((r) => !(schema.anyOf && r === 'prompt' && branches.some((b) => b !== branch && b.required?.includes('messages'))));
      const requiredBreak = missing.length
        ? fc.record({ base: valid(branch), field: fc.constantFrom(...missing) }).map(({ base, field }) => {
            const obj = { ...(base as Record<string, Json>) };
            delete obj[field];
            return { obj, what: `without ${field}` };
          })
        : fieldBreak;
      return fc.oneof(fieldBreak, requiredBreak);
    }),
  ).chain(({ obj, what }) => {
    const text = JSON.stringify(obj);
    return fc.oneof(
      { weight: 6, arbitrary: fc.constant({ body: enc.encode(text), what }) },
      // Truncated JSON: any proper prefix of an object is invalid JSON.
      { weight: 2, arbitrary: fc.nat({ max: Math.max(0, text.length - 1) }).map((n) => ({ body: enc.encode(text.slice(0, n)), what: `truncated at ${n}` })) },
      // Invalid UTF-8 spliced into an already-invalid body.
      {
        weight: 2,
        arbitrary: fc.tuple(fc.nat({ max: text.length }), fc.uint8Array({ minLength: 1, maxLength: 4 }).map((b) => b.map((x) => 0x80 | (x & 0x3f)))).map(([at, bytes]) => {
          const raw = enc.encode(text);
          const out = new Uint8Array(raw.length + bytes.length);
          out.set(raw.subarray(0, at));
          out.set(bytes, at);
          out.set(raw.subarray(at), at + bytes.length);
          return { body: out, what: `${what} + invalid UTF-8 at ${at}` };
        }),
      },
      // Not an object at all.
      { weight: 1, arbitrary: fc.constantFrom('[]', '"x"', '42', 'null', 'true', 'NaN', '{"a": Infinity}', '{"a": 1e999,', '\u0000', '{{}').map((t) => ({ body: enc.encode(t), what: `body ${t}` })) },
    );
  });
}

let llm: LLM;
let app: ReturnType<typeof createApp>['app'];

beforeAll(async () => {
  llm = await createTestLLM();
  ({ app } = createApp(llm, { disableLogRequests: true, log: () => {} }));
});

afterAll(() => llm?.close());

const endpoints: [string, z.ZodType][] = [
  ['/v1/completions', completionRequestSchema],
  ['/v1/chat/completions', chatRequestSchema],
  ['/tokenize', tokenizeRequestSchema],
  ['/detokenize', detokenizeRequestSchema],
];

describe('fuzzing the HTTP surface', () => {
  for (const [path, zodSchema] of endpoints) {
    it(`${path}: ${RUNS_PER_ENDPOINT} broken bodies, each a 4xx in OpenAI's error shape`, async () => {
      const schema = toSchema(zodSchema);
      const statuses = new Map<number, number>();
      await fc.assert(
        fc.asyncProperty(broken(schema), async ({ body, what }) => {
          const res = await app.request(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
          statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
          const text = await res.text();
          const context = `${what} -> ${res.status} ${text.slice(0, 200)}`;
          expect(res.status, context).toBeGreaterThanOrEqual(400);
          expect(res.status, context).toBeLessThan(500);
          const err = (JSON.parse(text) as { error: Record<string, unknown> }).error;
          expect(Object.keys(err).sort(), context).toEqual(['code', 'message', 'param', 'type']);
          expect(typeof err.message, context).toBe('string');
          expect(err.type, context).toBe('invalid_request_error');
        }),
        { numRuns: RUNS_PER_ENDPOINT, seed: 0x5eed + path.length, endOnFailure: true },
      );
      expect([...statuses.values()].reduce((a, b) => a + b, 0)).toBe(RUNS_PER_ENDPOINT);
    });
  }

  it('the server still answers a normal request correctly afterwards', async () => {
    const prompt = 'The capital of France is';
    const res = await app.request('/v1/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt, max_tokens: 6, temperature: 0 }),
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { choices: { text: string }[] };
    const [direct] = await llm.generate(prompt, { maxTokens: 6, temperature: 0 });
    expect(body.choices[0]!.text).toBe(direct!.outputs[0]!.text);
    // Engine stats are published after each step: give the last one a moment.
    expect(await waitFor(() => llm.stats().numRunning === 0 && llm.stats().kvBlocksInUse === 0)).toBe(true);
  });
});
