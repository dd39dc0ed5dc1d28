/** Shared test helpers: one small-footprint engine per file, polling for engine state. */

import { LLM, type LLMOptions } from '../src/index.js';

/** Engine options for tests: a small KV cache (the default model needs little) and a modest context. */
export const TEST_ENGINE: LLMOptions = { kvCacheBytes: 64 << 20, maxModelLen: 512 };

export function createTestLLM(extra: LLMOptions = {}): Promise<LLM> {
  return LLM.create({ ...TEST_ENGINE, ...extra });
}

/** Polls `cond` until it holds or `timeoutMs` passes; returns whether it held. */
export async function waitFor(cond: () => boolean, timeoutMs = 10_000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return cond();
}

/** A deterministic pseudo-random generator for property-style tests. */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** A response's status and text, and its JSON when the text is JSON (null for an SSE body). */
export async function readResponse(res: Response): Promise<{ status: number; json: any; text: string }> {
  const text = await res.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    // an SSE body
  }
  return { status: res.status, json, text };
}
