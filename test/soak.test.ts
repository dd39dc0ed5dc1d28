/**
 * The soak test in `npm test` (issue "Hardening": "Soak"): `bench/soak.mjs` for 60 s at concurrency 64 against the
 * real CLI server (a child process) with 25% aborted streams, non-streamed disconnects, slow readers and malformed
 * requests, then SIGTERM during load. Every check (none vanished, KV usage back to 0, RSS within 10% of warm-up,
 * clean exit on SIGTERM) must hold; the 10-minute version is `node bench/soak.mjs --duration 600`.
 */

import { describe, expect, it } from 'vitest';

// @ts-expect-error: a plain .mjs script without type declarations
import { runSoak } from '../bench/soak.mjs';

interface SoakResult {
  requests: number;
  counts: Record<string, Record<string, number>>;
  failures: string[];
}

describe('soak', () => {
  it('60 s at concurrency 64 with aborts, disconnects, slow readers and malformed requests, then SIGTERM', async () => {
    const result = (await runSoak({ durationMs: 60_000, concurrency: 64, warmupMs: 15_000, log: (l: string) => console.log(l) })) as SoakResult;
    console.log(JSON.stringify(result.counts));
    expect(result.failures).toEqual([]);
    expect(result.requests).toBeGreaterThan(100);
    for (const kind of ['normal', 'abort', 'disconnect', 'slow', 'malformed']) expect(Object.keys(result.counts[kind] ?? {}), kind).not.toHaveLength(0);
    expect(result.counts.normal?.completed ?? 0).toBeGreaterThan(10);
  }, 180_000);
});
