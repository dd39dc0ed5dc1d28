/**
 * Request-body handling shared by the routes: JSON parsing (malformed JSON and invalid UTF-8 are 400s, never 500s; bodies nested
 * deeper than `MAX_JSON_DEPTH` are refused before parsing), zod validation (400 naming the field), and the `model`
 * check (404 `model_not_found` for names the server does not serve).
 */

import type { Context } from 'hono';
import type { z } from 'zod';

import { HttpError, badRequest, fromZodError } from './errors.js';
import { MAX_JSON_DEPTH, jsonDepth } from './limits.js';
import type { ServerState } from './state.js';

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

export async function readJson(c: Context): Promise<unknown> {
  let text: string;
  try {
    // Strict: a lenient decode would turn broken bytes into U+FFFD and could silently rename a field.
    text = strictUtf8.decode(await c.req.arrayBuffer());
  } catch (err) {
    if (err instanceof TypeError) throw badRequest('the request body is not valid UTF-8', null, 'invalid_json');
    throw err;
  }
  if (text.trim() === '') throw badRequest('the request body is empty; expected a JSON object', null, 'invalid_json');
  if (jsonDepth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH) {
    throw badRequest(`the request body is nested deeper than ${MAX_JSON_DEPTH} levels`, null, 'invalid_json');
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw badRequest(`the request body is not valid JSON: ${(err as Error).message}`, null, 'invalid_json');
  }
}

export function validate<S extends z.ZodType>(schema: S, body: unknown): z.output<S> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw badRequest('the request body must be a JSON object', null, 'invalid_json');
  }
  const result = schema.safeParse(body);
  if (!result.success) throw fromZodError(result.error);
  return result.data;
}

export async function parseBody<S extends z.ZodType>(c: Context, schema: S): Promise<z.output<S>> {
  return validate(schema, await readJson(c));
}

/** The model name to report for a request: the requested one when served, the default when absent, else 404. */
export function resolveModel(state: ServerState, model: string | null | undefined): string {
  if (model === undefined || model === null || model === '') return state.modelNames[0]!;
  if (state.modelNames.includes(model)) return model;
  throw new HttpError(404, `The model \`${model}\` does not exist.`, {
    param: 'model',
    code: 'model_not_found',
  });
}
