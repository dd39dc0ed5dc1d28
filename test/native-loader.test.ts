/**
 * src/native.ts: which addon is loaded, and what a caller is told when the right one is missing. Runs against this
 * checkout's CPU build (bindings/), so a CUDA request must name the `-cuda` package.
 */

import path from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { LLM, PagedLLMError } from '../src/index.js';
import { hasCuda, loadNative, platformPackageName, platformSuffix, wantsCuda } from '../src/native.js';

const saved = process.env.PAGEDLLM_NATIVE_PATH;
afterEach(() => {
  if (saved === undefined) delete process.env.PAGEDLLM_NATIVE_PATH;
  else process.env.PAGEDLLM_NATIVE_PATH = saved;
});

describe('native loader', () => {
  it('names the platform packages the napi-rs way', () => {
    expect(platformPackageName()).toBe(`pagedllm-${platformSuffix()}`);
    expect(platformPackageName('cuda')).toBe(`pagedllm-${platformSuffix()}-cuda`);
    expect(['cuda', 'cuda:1', 'GPU'].map(wantsCuda)).toEqual([true, true, true]);
    expect(['cpu', undefined, 'cudax'].map(wantsCuda)).toEqual([false, false, false]);
  });

  it('the addon reports its compiled backends', () => {
    const backends = loadNative().backends!();
    expect(backends[0]).toBe('cpu');
    expect(backends.every((b) => b === 'cpu' || b === 'cuda')).toBe(true);
  });

  it('PAGEDLLM_NATIVE_PATH is used alone, and a missing file is named', () => {
    const missing = path.resolve('no-such-addon.node');
    process.env.PAGEDLLM_NATIVE_PATH = missing;
    expect(() => loadNative()).toThrow(`PAGEDLLM_NATIVE_PATH names ${missing}, which does not exist`);
  });

  it.skipIf(hasCuda(loadNative()))('device cuda with a CPU-only addon is a backend_error naming the -cuda package', async () => {
    const err = await LLM.create({ device: 'cuda' }).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(PagedLLMError);
    expect((err as PagedLLMError).code).toBe('backend_error');
    expect((err as PagedLLMError).message).toMatch(/^CUDA is not available: .*install `pagedllm-[a-z0-9-]+-cuda`/);
  });
});
