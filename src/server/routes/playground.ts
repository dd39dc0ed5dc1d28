/** Placeholder for the browser playground (GET /); the playground module replaces this file. */

import { Hono } from 'hono';

export function playgroundRoute(): Hono {
  const route = new Hono();
  route.get('/', (c) =>
    c.html('<!doctype html><html><head><title>pagedllm</title></head><body><h1>pagedllm</h1><p>OpenAI-compatible API at <code>/v1</code>.</p></body></html>'),
  );
  return route;
}
