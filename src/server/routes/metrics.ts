/** GET /metrics: Prometheus text exposition of the vLLM-named metrics (open even when an API key is set). */

import { Hono } from 'hono';

import type { AppEnv } from '../app-env.js';
import type { ServerState } from '../state.js';

export function metricsRoute(state: ServerState): Hono<AppEnv> {
  const route = new Hono<AppEnv>();
  route.get('/metrics', async (c) => {
    const text = await state.metrics.render();
    return c.body(text, 200, { 'Content-Type': state.metrics.contentType });
  });
  return route;
}
