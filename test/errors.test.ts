import { describe, expect, it } from 'vitest';

import {
  AbortError,
  ContextLengthError,
  EngineClosedError,
  ModelLoadError,
  ModelNotFoundError,
  PagedLLMError,
  ValidationError,
} from '../src/index.js';
import { fromNative } from '../src/errors.js';

describe('native error mapping', () => {
  it('maps tagged invalid_param errors to ValidationError with a camelCase param', () => {
    const err = fromNative(new Error('[invalid_param:stop_token_ids] invalid value for `stop_token_ids`: token id 99999 is outside the vocabulary'));
    expect(err).toBeInstanceOf(ValidationError);
    expect(err.code).toBe('invalid_param');
    expect(err.param).toBe('stopTokenIds');
    expect(err.message).toBe('invalid value for `stopTokenIds`: token id 99999 is outside the vocabulary');
  });

  it.each([
    ['context_length_exceeded', ContextLengthError],
    ['model_not_found', ModelNotFoundError],
    ['model_load_failed', ModelLoadError],
    ['engine_closed', EngineClosedError],
  ] as const)('maps [%s] to its class', (code, cls) => {
    const err = fromNative(new Error(`[${code}] something happened`));
    expect(err).toBeInstanceOf(cls);
    expect(err).toBeInstanceOf(PagedLLMError);
    expect(err.code).toBe(code);
    expect(err.message).toBe('something happened');
    expect(err.name).toBe(cls.name);
  });

  it('keeps the native cause chain', () => {
    const native = new Error('[io_error] reading /m.gguf: no such file', { cause: new Error('no such file') });
    const err = fromNative(native);
    expect(err.code).toBe('io_error');
    expect((err.cause as Error).message).toBe('no such file');
  });

  it('treats untagged errors as internal errors', () => {
    const err = fromNative(new TypeError('Cannot read properties of undefined'));
    expect(err.code).toBe('internal_error');
    expect(err.message).toContain('Cannot read properties');
  });

  it('AbortError has code aborted', () => {
    const err = new AbortError();
    expect(err.code).toBe('aborted');
    expect(err.name).toBe('AbortError');
  });
});
