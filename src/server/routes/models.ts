/** GET /v1/models and GET /v1/models/{id}: the served model name(s), with vLLM's `max_model_len` and `root`. */

import { Hono } from 'hono';

import type { AppEnv } from '../app-env.js';
import { HttpError } from '../errors.js';
import type { ServerState } from '../state.js';

export function modelsRoute(state: ServerState): Hono<AppEnv> {
  const route = new Hono<AppEnv>();
  const created = Math.floor(Date.now() / 1000);
  const card = (id: string) => ({
    id,
    object: 'model',
    created,
    owned_by: 'pagedllm',
    root: state.llm.modelInfo.path,
    parent: null,
    max_model_len: state.llm.modelInfo.maxModelLen,
    permission: [],
  });
  route.get('/v1/models', (c) => c.json({ object: 'list', data: state.modelNames.map(card) }));
  route.get('/v1/models/:id{.+}', (c) => {
    const id = c.req.param('id');
    if (!state.modelNames.includes(id)) {
      throw new HttpError(404, `The model \`${id}\` does not exist.`, { param: 'model', code: 'model_not_found' });
    }
    return c.json(card(id));
  });
  return route;
}
