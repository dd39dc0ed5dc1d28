/**
 * `createApp(llm, options)`: the Hono application of the OpenAI-compatible server, without a socket (tests drive it
 * with `app.request()`; `startServer` puts it on one). Middleware, in order: X-Request-Id (echoed, generated when
 * absent), request log lines, API-key auth, body-size limit (413, with `Connection: close`: the unread rest of the
 * body would otherwise be taken as the next request on a keep-alive connection, or the server would cut the
 * socket under a pooled client's next request). One route module per resource is mounted with
 * `app.route()`. Every error leaves as an OpenAI-shaped body with the right status; unknown paths are 404s.
 */

import { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';

import type { LLM } from '../llm.js';
import type { AppEnv } from './app-env.js';
import { apiKeyAuth } from './auth.js';
import { HttpError, errorResponse, toHttpError } from './errors.js';
import { type ServerOptionsInput, resolveServerOptions } from './options.js';
import { chatRoute } from './routes/chat.js';
import { completionsRoute } from './routes/completions.js';
import { healthRoute } from './routes/health.js';
import { metricsRoute } from './routes/metrics.js';
import { modelsRoute } from './routes/models.js';
import { openapiRoute } from './routes/openapi.js';
import { playgroundRoute } from './routes/playground.js';
import { tokenizeRoute } from './routes/tokenize.js';
import { type ServerState, createState, newRequestId } from './state.js';

export type { ServerState } from './state.js';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export function createApp(llm: LLM, input: ServerOptionsInput = {}): { app: Hono<AppEnv>; state: ServerState } {
  const options = resolveServerOptions(input);
  const state = createState(llm, options);
  const app = new Hono<AppEnv>();

  app.use(async (c, next) => {
    const given = c.req.header('x-request-id');
    const requestId = given !== undefined && REQUEST_ID.test(given) ? given : newRequestId();
    c.set('requestId', requestId);
    c.header('X-Request-Id', requestId);
    const started = performance.now();
    await next();
    if (!options.disableLogRequests) {
      const ms = (performance.now() - started).toFixed(1);
      options.log(`INFO ${c.req.method} ${c.req.path} ${c.res.status} ${ms}ms request_id=${requestId}`);
    }
  });
  if (options.apiKey !== null) app.use(apiKeyAuth(options.apiKey));
  app.use(
    bodyLimit({
      maxSize: options.bodyLimitBytes,
      onError: (c) =>
        errorResponse(
          c,
          new HttpError(413, `the request body is larger than the limit of ${options.bodyLimitBytes} bytes (--max-body-bytes)`, {
            code: 'request_too_large',
            headers: { Connection: 'close' },
          }),
        ),
    }),
  );

  app.route('/', modelsRoute(state));
  app.route('/', completionsRoute(state));
  app.route('/', chatRoute(state));
  app.route('/', tokenizeRoute(state));
  app.route('/', healthRoute(state));
  app.route('/', metricsRoute(state));
  app.route('/', openapiRoute(state));
  app.route('/', playgroundRoute());

  app.notFound((c) => errorResponse(c, new HttpError(404, `no route for ${c.req.method} ${c.req.path}`, { code: 'not_found' })));
  app.onError((err, c) => {
    const httpError = toHttpError(err);
    if (httpError.status >= 500 && httpError.code === 'internal_error') {
      options.log(`ERROR ${c.req.method} ${c.req.path}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    }
    return errorResponse(c, httpError);
  });
  return { app, state };
}
