/**
 * OpenAI-shaped errors: every error response is `{"error": {"message", "type", "param", "code"}}` with the right
 * HTTP status. `HttpError` is what route code throws; `toHttpError` maps anything else (engine `PagedLLMError`s by
 * their `.code`, zod failures by their path) so that only real faults become 500s. Parameter names are reported in
 * the API's snake_case (`top_p`), not the TS API's camelCase.
 */

import type { Context } from 'hono';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type { z } from 'zod';

import { PagedLLMError } from '../errors.js';

export type ErrorType = 'invalid_request_error' | 'authentication_error' | 'not_found_error' | 'server_error';

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export class HttpError extends Error {
  readonly status: ContentfulStatusCode;
  readonly type: ErrorType;
  readonly param: string | null;
  readonly code: string | null;
  /** Extra response headers (Retry-After, WWW-Authenticate). */
  readonly headers: Record<string, string>;

  constructor(
    status: ContentfulStatusCode,
    message: string,
    opts: { type?: ErrorType; param?: string | null; code?: string | null; headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'HttpError';
    this.status = status;
    this.type = opts.type ?? (status >= 500 ? 'server_error' : 'invalid_request_error');
    this.param = opts.param ?? null;
    this.code = opts.code ?? null;
    this.headers = opts.headers ?? {};
  }

  body(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export const badRequest = (message: string, param: string | null = null, code: string | null = null): HttpError =>
  new HttpError(400, message, { param, code });

/** 400 for a request field whose feature the server does not implement (never silently ignored). */
export const notSupported = (param: string, what: string): HttpError =>
  new HttpError(400, `\`${param}\`${what === '' ? '' : ' ' + what} is not supported yet`, { param, code: 'unsupported_parameter' });

/** `topP` -> `top_p`. */
export function snakeCase(name: string): string {
  return name.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase());
}

/** The request field a TS-API parameter name came from (`maxTokens` -> `max_tokens`; `ids` -> `tokens`). */
function apiParam(param: string | undefined, renames: Record<string, string>): string | null {
  if (param === undefined || param === 'unknown') return null;
  return renames[param] ?? snakeCase(param);
}

/**
 * Maps an engine error. `renames` names API fields that differ from the TS API's (e.g. `ids` -> `tokens`);
 * `promptParam` is where context-length errors point (`prompt` or `messages`).
 */
export function fromEngineError(
  err: PagedLLMError,
  ctx: { promptParam?: string; renames?: Record<string, string> } = {},
): HttpError {
  const renames = ctx.renames ?? {};
  switch (err.code) {
    case 'invalid_param': {
      const param = apiParam(err.param, renames);
      let message = err.message;
      if (err.param !== undefined && param !== null) message = message.replaceAll(`\`${err.param}\``, `\`${param}\``);
      return badRequest(message, param);
    }
    case 'context_length_exceeded':
      return badRequest(err.message, ctx.promptParam ?? 'prompt', 'context_length_exceeded');
    case 'chat_template_error':
      return badRequest(err.message, 'messages', 'chat_template_error');
    case 'tokenizer_error':
      return badRequest(err.message, ctx.promptParam ?? 'prompt', 'tokenizer_error');
    case 'unsupported':
      return badRequest(err.message, null, 'unsupported');
    case 'engine_closed':
      return new HttpError(503, `the engine is not available: ${err.message}`, { code: 'engine_closed' });
    case 'aborted':
      return new HttpError(503, 'the request was aborted (the server is shutting down or the client went away)', {
        code: 'aborted',
      });
    default:
      return new HttpError(500, `internal error: ${err.message}`, { code: err.code, cause: err });
  }
}

/** `messages.0.content` -> `messages[0].content`. */
export function paramPath(path: readonly PropertyKey[]): string | null {
  if (path.length === 0) return null;
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += (out === '' ? '' : '.') + String(part);
  }
  return out;
}

/** The first zod issue as a 400 naming the field. */
export function fromZodError(error: z.ZodError): HttpError {
  const issue = error.issues[0]!;
  const param = paramPath(issue.path);
  const where = param === null ? 'request body' : `\`${param}\``;
  return badRequest(`invalid value for ${where}: ${issue.message}`, param);
}

export function toHttpError(err: unknown, ctx?: Parameters<typeof fromEngineError>[1]): HttpError {
  if (err instanceof HttpError) return err;
  if (err instanceof PagedLLMError) return fromEngineError(err, ctx);
  const message = err instanceof Error ? err.message : String(err);
  return new HttpError(500, `internal error: ${message}`, { code: 'internal_error', cause: err });
}

export function errorResponse(c: Context, err: HttpError): Response {
  for (const [k, v] of Object.entries(err.headers)) c.header(k, v);
  return c.json(err.body(), err.status);
}
