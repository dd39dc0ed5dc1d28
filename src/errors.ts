/**
 * Typed errors. Every error pagedllm throws is a `PagedLLMError` with a stable `code` (the engine's
 * `EngineError::code()`, plus `aborted` for AbortSignal cancellation); `InvalidParam` errors also name the offending
 * field in `.param` (camelCase, as in the TS API). The native binding tags its messages `[code] message` or
 * `[invalid_param:field] message`; `fromNative` turns those into the classes below.
 */

export type ErrorCode =
  | 'invalid_param'
  | 'context_length_exceeded'
  | 'model_not_found'
  | 'model_load_failed'
  | 'unsupported'
  | 'tokenizer_error'
  | 'chat_template_error'
  | 'engine_closed'
  | 'unknown_request'
  | 'internal_error'
  | 'backend_error'
  | 'io_error'
  | 'aborted';

export class PagedLLMError extends Error {
  readonly code: ErrorCode;
  /** The offending field, for `invalid_param` errors. */
  readonly param: string | undefined;

  constructor(code: ErrorCode, message: string, options?: { param?: string; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.param = options?.param;
  }
}

/** A request or option value is out of range (HTTP 400 with `param` in the server). */
export class ValidationError extends PagedLLMError {
  constructor(param: string, message: string, options?: { cause?: unknown }) {
    super('invalid_param', message, { param, cause: options?.cause });
  }
}

/** Prompt plus `maxTokens` does not fit the model's context. */
export class ContextLengthError extends PagedLLMError {}
/** The model path does not exist. */
export class ModelNotFoundError extends PagedLLMError {}
/** The model file exists but cannot be loaded (corrupt, truncated, unsupported). */
export class ModelLoadError extends PagedLLMError {}
/** The engine was closed (or its thread died). */
export class EngineClosedError extends PagedLLMError {}
/** The request was cancelled through its AbortSignal. */
export class AbortError extends PagedLLMError {
  constructor(message = 'the request was aborted', options?: { cause?: unknown }) {
    super('aborted', message, options);
  }
}

const KNOWN_CODES = new Set<string>([
  'invalid_param',
  'context_length_exceeded',
  'model_not_found',
  'model_load_failed',
  'unsupported',
  'tokenizer_error',
  'chat_template_error',
  'engine_closed',
  'unknown_request',
  'internal_error',
  'backend_error',
  'io_error',
  'aborted',
]);

const TAG = /^\[([a-z_]+)(?::([^\]]+))?\] ([\s\S]*)$/;

/** snake_case engine field names to the camelCase names of the TS API (`top_p` -> `topP`). */
export function camelCaseField(field: string): string {
  return field.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

export function errorFor(code: ErrorCode, message: string, options?: { param?: string; cause?: unknown }): PagedLLMError {
  switch (code) {
    case 'invalid_param':
      return new ValidationError(options?.param ?? 'unknown', message, options);
    case 'context_length_exceeded':
      return new ContextLengthError(code, message, options);
    case 'model_not_found':
      return new ModelNotFoundError(code, message, options);
    case 'model_load_failed':
      return new ModelLoadError(code, message, options);
    case 'engine_closed':
      return new EngineClosedError(code, message, options);
    case 'aborted':
      return new AbortError(message, options);
    default:
      return new PagedLLMError(code, message, options);
  }
}

/** Converts an error thrown by the native binding; anything untagged becomes an `internal_error`. */
export function fromNative(err: unknown): PagedLLMError {
  if (err instanceof PagedLLMError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const cause = err instanceof Error ? err.cause : undefined;
  const m = TAG.exec(message);
  if (m && KNOWN_CODES.has(m[1]!)) {
    const raw = m[2];
    const param = raw === undefined ? undefined : camelCaseField(raw);
    // Name the field as the caller wrote it: the engine says `top_p`, the TS API calls it `topP`.
    const text = raw === undefined ? m[3]! : m[3]!.replaceAll(`\`${raw}\``, `\`${param}\``);
    return errorFor(m[1] as ErrorCode, text, { param, cause });
  }
  return new PagedLLMError('internal_error', message, { cause: err });
}

/** Runs a native call, converting what it throws. */
export function native<T>(call: () => T): T {
  try {
    return call();
  } catch (err) {
    throw fromNative(err);
  }
}

/** Awaits a native Promise, converting its rejection. */
export async function nativeAsync<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw fromNative(err);
  }
}
