/** The /v1/completions request body (OpenAI's fields plus vLLM's sampling extras). */

import { z } from 'zod';

import { MAX_LOGPROBS } from '../../sampling-params.js';
import { MAX_N, MAX_PROMPTS_PER_REQUEST } from '../limits.js';
import { samplingFields, tokenIdArray } from './common.js';

const tooMany = `must have at most ${MAX_PROMPTS_PER_REQUEST} prompts`;

export const completionRequestSchema = z.object({
  ...samplingFields,
  prompt: z.union([
    z.string(),
    z.array(z.string()).min(1, 'must not be empty').max(MAX_PROMPTS_PER_REQUEST, tooMany),
    tokenIdArray.min(1, 'must not be empty'),
    z.array(tokenIdArray.min(1, 'must not be empty')).min(1, 'must not be empty').max(MAX_PROMPTS_PER_REQUEST, tooMany),
  ], { error: 'must be a string, a non-empty array of strings, of token ids, or of token-id arrays' }),
  max_tokens: z.number().int('must be an integer').min(1, 'must be at least 1').nullish().describe('Default 16; null = until the context is full.'),
  logprobs: z.number().int('must be an integer').min(0, 'must be >= 0').max(MAX_LOGPROBS, `must be at most ${MAX_LOGPROBS}`).nullish(),
  echo: z.boolean().nullish(),
  best_of: z.number().int('must be an integer').min(1, 'must be at least 1').max(MAX_N, `must be at most ${MAX_N}`).nullish(),
  suffix: z.string().nullish(),
  return_token_ids: z.boolean().nullish().describe('vLLM: choices carry `token_ids` and `prompt_token_ids` (always on with --skip-tokenizer-init).'),
});

export type CompletionRequest = z.output<typeof completionRequestSchema>;
