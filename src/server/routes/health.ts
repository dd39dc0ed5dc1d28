/**
 * GET /health (200 with an empty body while the engine can serve, 503 once it is closed or its thread died) and
 * GET /version ({"version": the package version}). Both stay open when an API key is set.
 */

import fs from 'node:fs';

import { Hono } from 'hono';

import type { AppEnv } from '../app-env.js';
import { HttpError, errorResponse } from '../errors.js';
import type { ServerState } from '../state.js';

function packageVersion(): string {
  // src/server/routes/ and dist/server/routes/ are both three levels below the package root.
  const file = new URL('../../../package.json', import.meta.url);
  return (JSON.parse(fs.readFileSync(file, 'utf8')) as { version: string }).version;
}

export const VERSION = packageVersion();

export function healthRoute(state: ServerState): Hono<AppEnv> {
  const route = new Hono<AppEnv>();
  route.get('/health', (c) => {
    if (!state.llm.isAlive) {
      return errorResponse(c, new HttpError(503, 'the engine is not running', { code: 'engine_closed' }));
    }
    return c.body(null, 200);
  });
  route.get('/version', (c) => c.json({ version: VERSION }));
  return route;
}
