// Loading failures and the engine's lifecycle: every failure is a typed error, never a crash.

import { mkdtempSync, openSync, readSync, closeSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import {
  EngineClosedError,
  LLM,
  ModelNotFoundError,
  PagedLLMError,
  type RequestOutput,
  ValidationError,
  defaultModelPath,
} from '../src/index.js';
import { TEST_ENGINE, createTestLLM, rng } from './helpers.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'pagedllm-test-'));

async function loadError(model: string): Promise<PagedLLMError> {
  const err = await LLM.create({ ...TEST_ENGINE, model }).then(
    (llm) => {
      llm.close();
      return undefined;
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PagedLLMError);
  return err as PagedLLMError;
}

describe('loading', () => {
  it('a missing model path is model_not_found and names the path', async () => {
    const missing = path.join(tmp, 'no-such-model.gguf');
    const err = await loadError(missing);
    expect(err).toBeInstanceOf(ModelNotFoundError);
    expect(err.message).toContain(missing);
  });

  it('device: an unknown device is a ValidationError naming `device`; cuda on a CPU-only build is backend_error', async () => {
    const bad = await LLM.create({ ...TEST_ENGINE, device: 'tpu' }).then(() => undefined, (e: unknown) => e);
    expect(bad).toBeInstanceOf(ValidationError);
    expect((bad as ValidationError).param).toBe('device');
    const frac = await LLM.create({ ...TEST_ENGINE, gpuMemoryUtilization: 1.5 }).then(() => undefined, (e: unknown) => e);
    expect((frac as ValidationError).param).toBe('gpuMemoryUtilization');
    const dtype = await LLM.create({ ...TEST_ENGINE, dtype: 'int8' as 'auto' }).then(() => undefined, (e: unknown) => e);
    expect((dtype as ValidationError).param).toBe('dtype');
    // The npm package's default build has no CUDA backend (PAGEDLLM_CUDA=1 builds one); without a GPU the CUDA
    // build refuses too. Either way the error names the cause and nothing crashes.
    const err = await LLM.create({ ...TEST_ENGINE, device: 'cuda:0' }).then(
      (llm) => {
        llm.close();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PagedLLMError);
    expect((err as PagedLLMError).code).toBe('backend_error');
    expect((err as PagedLLMError).message).toMatch(/CUDA is not available/);
    // The engine stays usable for CPU work afterwards.
    const llm = await createTestLLM();
    const [out] = await llm.generate('Hi', { maxTokens: 2, temperature: 0, ignoreEos: true });
    expect(out!.outputs[0]!.tokenIds).toHaveLength(2);
    llm.close();
  });

  it('a GGUF file of random bytes fails to load without crashing', async () => {
    const next = rng(42);
    const garbage = Buffer.from(Array.from({ length: 64 * 1024 }, () => Math.floor(next() * 256)));
    const file = path.join(tmp, 'garbage.gguf');
    writeFileSync(file, garbage);
    const err = await loadError(file);
    expect(err.code).toBe('model_load_failed');
    expect(err.message).toContain(file);
  });

  it('a truncated copy of the real model fails to load without crashing', async () => {
    const head = Buffer.alloc(2 << 20);
    const fd = openSync(defaultModelPath(), 'r');
    readSync(fd, head, 0, head.length, 0);
    closeSync(fd);
    const file = path.join(tmp, 'truncated.gguf');
    writeFileSync(file, head);
    const err = await loadError(file);
    expect(err.code).toBe('model_load_failed');
  });

  it('invalid engine options are rejected before loading', async () => {
    await expect(LLM.create({ maxNumSeqs: 0 })).rejects.toBeInstanceOf(ValidationError);
    await expect(LLM.create({ blockSize: 16, bogus: 1 } as never)).rejects.toThrow(/unknown field `bogus`/);
  });
});

describe('close', () => {
  it('after close() every call throws engine_closed', async () => {
    const llm = await createTestLLM();
    const [out] = await llm.generate('Hi', { temperature: 0, maxTokens: 2 });
    expect(out!.finished).toBe(true);
    llm.close();
    llm.close(); // idempotent
    expect(llm.isAlive).toBe(false);
    for (const call of [() => llm.stats(), () => llm.tokenize('x'), () => llm.applyChatTemplate([{ role: 'user', content: 'x' }])]) {
      let caught: unknown;
      try {
        call();
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(EngineClosedError);
      expect((caught as PagedLLMError).code).toBe('engine_closed');
    }
    await expect(llm.generate('Hi', { maxTokens: 2 })).rejects.toMatchObject({ code: 'engine_closed' });
  });

  it('close() during generation ends the pending request with an error, not a hang', async () => {
    const llm = await createTestLLM();
    const p = llm.generate('Tell me a long story.', { maxTokens: 400, ignoreEos: true });
    await new Promise((r) => setTimeout(r, 100));
    llm.close();
    const result: unknown = await p.then(
      (outs) => outs[0]!,
      (e: unknown) => e,
    );
    // Either the engine delivered an aborted final delta or the stream ended early (engine_closed).
    if (result instanceof Error) expect((result as PagedLLMError).code).toBe('engine_closed');
    else expect((result as RequestOutput).outputs[0]!.finishReason).toBe('abort');
  });
});
