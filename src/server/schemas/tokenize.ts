/** The /tokenize and /detokenize request bodies (vLLM's). */

import { z } from 'zod';

import { chatMessagesSchema } from './chat.js';
import { tokenIdArray } from './common.js';

export const tokenizeRequestSchema = z.union([
  z.object({
    model: z.string().nullish(),
    prompt: z.string(),
    add_special_tokens: z.boolean().nullish().describe('Default true.'),
  }),
  z.object({
    model: z.string().nullish(),
    messages: chatMessagesSchema,
    add_generation_prompt: z.boolean().nullish().describe('Default true.'),
    add_special_tokens: z.boolean().nullish().describe('Default false: the template writes them.'),
    chat_template: z.string().nullish(),
    chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
  }),
]);

export const detokenizeRequestSchema = z.object({
  model: z.string().nullish(),
  tokens: tokenIdArray,
});

export type TokenizeRequest = z.output<typeof tokenizeRequestSchema>;
