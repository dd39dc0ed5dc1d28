/**
 * GET /openapi.json: an OpenAPI 3.1 document whose request-body schemas are generated from the same zod schemas
 * that validate the requests (`z.toJSONSchema`), so the published contract cannot drift from the enforced one.
 */

import { Hono } from 'hono';
import { z } from 'zod';

import type { AppEnv } from '../app-env.js';
import { chatRequestSchema } from '../schemas/chat.js';
import { completionRequestSchema } from '../schemas/completions.js';
import { detokenizeRequestSchema, tokenizeRequestSchema } from '../schemas/tokenize.js';
import type { ServerState } from '../state.js';
import { VERSION } from './health.js';

const jsonSchema = (schema: z.ZodType) => z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any', target: 'draft-2020-12' });

const errorSchema = {
  type: 'object',
  properties: {
    error: {
      type: 'object',
      properties: {
        message: { type: 'string' },
        type: { type: 'string' },
        param: { type: ['string', 'null'] },
        code: { type: ['string', 'null'] },
      },
      required: ['message', 'type', 'param', 'code'],
    },
  },
  required: ['error'],
};

const errorResponses = {
  '400': { description: 'Invalid request (the field is named in `error.param`)', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
  '401': { description: 'Missing or wrong API key', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
  '404': { description: 'Unknown model', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
  '413': { description: 'Request body too large', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
  '503': { description: 'Overloaded (see Retry-After) or engine unavailable', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
};

function post(summary: string, schemaName: string, streams: boolean) {
  const content: Record<string, unknown> = { 'application/json': { schema: { type: 'object' } } };
  if (streams) content['text/event-stream'] = { schema: { type: 'string', description: 'SSE `data: {json}` chunks, then `data: [DONE]`' } };
  return {
    post: {
      summary,
      security: [{ bearer: [] }],
      requestBody: { required: true, content: { 'application/json': { schema: { $ref: `#/components/schemas/${schemaName}` } } } },
      responses: { '200': { description: 'OK', content }, ...errorResponses },
    },
  };
}

function get(summary: string, contentType = 'application/json', secured = false) {
  return {
    get: {
      summary,
      ...(secured ? { security: [{ bearer: [] }] } : { security: [] }),
      responses: { '200': { description: 'OK', content: { [contentType]: { schema: contentType === 'application/json' ? { type: 'object' } : { type: 'string' } } } } },
    },
  };
}

export function buildOpenApiDocument(): Record<string, unknown> {
  return {
    openapi: '3.1.0',
    info: { title: 'pagedllm OpenAI-compatible API', version: VERSION },
    paths: {
      '/v1/models': get('List the served models', 'application/json', true),
      '/v1/completions': post('Create a completion', 'CompletionRequest', true),
      '/v1/chat/completions': post('Create a chat completion', 'ChatCompletionRequest', true),
      '/tokenize': post('Tokenize a prompt or chat messages', 'TokenizeRequest', false),
      '/detokenize': post('Turn token ids back into text', 'DetokenizeRequest', false),
      '/health': get('200 while the engine can serve, 503 otherwise', 'text/plain'),
      '/version': get('Server version'),
      '/metrics': get('Prometheus metrics (vLLM names)', 'text/plain'),
    },
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      schemas: {
        CompletionRequest: jsonSchema(completionRequestSchema),
        ChatCompletionRequest: jsonSchema(chatRequestSchema),
        TokenizeRequest: jsonSchema(tokenizeRequestSchema),
        DetokenizeRequest: jsonSchema(detokenizeRequestSchema),
        Error: errorSchema,
      },
    },
  };
}

export function openapiRoute(_state: ServerState): Hono<AppEnv> {
  const route = new Hono<AppEnv>();
  const doc = buildOpenApiDocument();
  route.get('/openapi.json', (c) => c.json(doc));
  return route;
}
