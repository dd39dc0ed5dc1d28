/** The /v1/chat/completions request body: messages with text content (string or text parts), sampling fields. */

import { z } from 'zod';

import { MAX_LOGPROBS } from '../../sampling-params.js';
import { chatToolSchema, toolChoiceSchema } from '../../tools/tool-choice.js';
import { MAX_CONTENT_PARTS, MAX_MESSAGES } from '../limits.js';
import { samplingFields } from './common.js';

export const contentPartSchema = z.looseObject({
  type: z.string(),
  text: z.string().optional(),
});

export const chatMessageSchema = z.looseObject({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: z.union([z.string(), z.array(contentPartSchema).max(MAX_CONTENT_PARTS, `must have at most ${MAX_CONTENT_PARTS} parts`), z.null()], { error: 'must be a string or an array of content parts' }).optional(),
  name: z.string().optional(),
  tool_call_id: z.string().optional(),
});

export const chatMessagesSchema = z
  .array(chatMessageSchema)
  .min(1, 'must not be empty')
  .max(MAX_MESSAGES, `must have at most ${MAX_MESSAGES} messages`);

/** OpenAI's limit on tools per request. */
const MAX_TOOLS = 128;

export const chatRequestSchema = z.object({
  ...samplingFields,
  messages: chatMessagesSchema,
  max_tokens: z.number().int('must be an integer').min(1, 'must be at least 1').nullish().describe('Deprecated by OpenAI; default: until the context is full.'),
  max_completion_tokens: z.number().int('must be an integer').min(1, 'must be at least 1').nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int('must be an integer').min(0, 'must be >= 0').max(MAX_LOGPROBS, `must be at most ${MAX_LOGPROBS}`).nullish(),
  response_format: z.looseObject({ type: z.string() }).nullish().describe('{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": {name, schema, strict}} (checked in structured-outputs.ts).'),
  tools: z.array(chatToolSchema).max(MAX_TOOLS, `must have at most ${MAX_TOOLS} tools`).nullish(),
  tool_choice: toolChoiceSchema.nullish().describe('Default: "auto" with tools (needs --enable-auto-tool-choice), else "none".'),
  parallel_tool_calls: z.boolean().nullish(),
  add_generation_prompt: z.boolean().nullish(),
  chat_template: z.string().nullish(),
  chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
  return_token_ids: z.boolean().nullish().describe('vLLM: the response carries `prompt_token_ids` and each choice its `token_ids`.'),
});

export type ChatRequest = z.output<typeof chatRequestSchema>;
export type ChatMessageInput = z.output<typeof chatMessageSchema>;
