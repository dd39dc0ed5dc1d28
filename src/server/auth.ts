/**
 * `--api-key`: `Authorization: Bearer KEY` required on the API paths (/v1/*, /tokenize, /detokenize); /, /health,
 * /version, /metrics and /openapi.json stay open, as in vLLM. Keys are compared in constant time (SHA-256 digests of
 * equal length through `crypto.timingSafeEqual`). A missing or wrong key is a 401 in OpenAI's shape.
 */

import { createHash, timingSafeEqual } from 'node:crypto';

import type { MiddlewareHandler } from 'hono';

import { HttpError } from './errors.js';

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

export function keysMatch(given: string, expected: string): boolean {
  return timingSafeEqual(digest(given), digest(expected));
}

export function isProtectedPath(path: string): boolean {
  return path === '/v1' || path.startsWith('/v1/') || path === '/tokenize' || path === '/detokenize';
}

export function apiKeyAuth(apiKey: string): MiddlewareHandler {
  return async (c, next) => {
    if (!isProtectedPath(c.req.path)) return next();
    const header = c.req.header('authorization') ?? '';
    const m = /^Bearer\s+(.+)$/i.exec(header.trim());
    const headers = { 'WWW-Authenticate': 'Bearer' };
    if (!m) {
      throw new HttpError(401, "You didn't provide an API key. Pass it as `Authorization: Bearer KEY`.", {
        type: 'invalid_request_error',
        code: 'invalid_api_key',
        headers,
      });
    }
    if (!keysMatch(m[1]!.trim(), apiKey)) {
      throw new HttpError(401, 'Incorrect API key provided.', { type: 'invalid_request_error', code: 'invalid_api_key', headers });
    }
    return next();
  };
}
