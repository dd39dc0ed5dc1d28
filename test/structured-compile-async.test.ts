/**
 * A grammar compile the cache has not seen runs off the event loop (`addRequestAsync`): while a large JSON Schema
 * compiles, another request's stream keeps flowing. Same pattern as the large-template-render test in
 * server-connections.test.ts: calibrate a schema whose first request takes a while alone, then submit it while
 * another request streams and look at the gaps between that stream's chunks.
 */

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { LLM } from '../src/index.js';
import { createTestLLM, waitFor } from './helpers.js';

let llm: LLM;

beforeAll(async () => {
  llm = await createTestLLM({ maxNumSeqs: 4 });
}, 120_000);

afterAll(async () => {
  await llm?.close();
});

/** `fields` required string properties with patterns: compile time grows with the field count. */
function bigSchema(fields: number, tag: string): Record<string, unknown> {
  const properties: Record<string, unknown> = {};
  for (let i = 0; i < fields; i++) {
    properties[`${tag}_${i}`] = { type: 'string', pattern: `^[a-z]{2,8}-${i}(-[0-9]{1,4}){1,3}$` };
  }
  return { type: 'object', properties, required: Object.keys(properties), additionalProperties: false };
}

let nonce = 0;
/** Milliseconds of one request with a never-seen `fields`-field schema (compile included), one token. */
async function freshConstrained(fields: number): Promise<number> {
  const started = performance.now();
  await llm.generate('Fill in the form.', { temperature: 0, maxTokens: 1, structuredOutputs: { json: bigSchema(fields, `t${nonce++}`) } });
  return performance.now() - started;
}

describe('grammar compile off the event loop', () => {
  it("a slow compile does not delay another request's stream", async () => {
    // Calibrate: enough fields that a fresh compile alone takes about a second (at least 400 ms).
    let fields = 100;
    let alone = await freshConstrained(fields);
    while (alone < 1000 && fields < 12_800) {
      fields *= 2;
      alone = await freshConstrained(fields);
    }
    expect(alone, `${fields} fields`).toBeGreaterThanOrEqual(400);

    const arrivals: number[] = [];
    const streaming = (async () => {
      for await (const d of llm.stream('Count to one hundred:', { temperature: 0, maxTokens: 400, ignoreEos: true })) {
        if (d.tokenIds.length > 0) arrivals.push(performance.now());
      }
    })();
    expect(await waitFor(() => arrivals.length >= 5, 30_000)).toBe(true);
    const start = performance.now();
    const concurrent = await freshConstrained(fields);
    const end = performance.now();
    await streaming;

    const during = arrivals.filter((t) => t >= start && t <= end);
    const points = [start, ...during, end];
    const maxGap = Math.max(...points.slice(1).map((t, i) => t - points[i]!));
    // With the compile on the event loop, no chunk would arrive until it finished.
    expect(during.length, `chunks during a ${Math.round(concurrent)} ms constrained request`).toBeGreaterThan(3);
    expect(maxGap, 'largest gap between chunks during the compile').toBeLessThan(alone / 2);
  }, 120_000);
});
