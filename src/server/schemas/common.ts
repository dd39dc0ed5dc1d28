/**
 * Request-schema pieces shared by /v1/completions and /v1/chat/completions: the sampling fields (OpenAI's plus
 * vLLM's extras, snake_case, with the TS API's ranges), and their translation into `SamplingParamsInput`. Unknown
 * fields are accepted and ignored as OpenAI does (zod objects strip them); `null` means "not set" everywhere, since
 * many clients send explicit nulls.
 */

import { z } from 'zod';

import { type SamplingParamsInput, samplingParamsSchema } from '../../sampling-params.js';
import {
  MAX_CACHE_SALT_LENGTH,
  MAX_LOGIT_BIAS_ENTRIES,
  MAX_LOGPROBS,
  MAX_N,
  MAX_STOP_STRINGS,
  MAX_STOP_STRING_LENGTH,
  MAX_STOP_TOKEN_IDS,
} from '../limits.js';

const S = samplingParamsSchema.shape;

export const tokenIdArray = z.array(z.number().int('must be an integer').min(0, 'token ids must be >= 0'));

const stopString = z
  .string()
  .min(1, 'stop strings must not be empty')
  .max(MAX_STOP_STRING_LENGTH, `stop strings must be at most ${MAX_STOP_STRING_LENGTH} characters`);

export const streamOptionsSchema = z.object({
  include_usage: z.boolean().nullish(),
  continuous_usage_stats: z.boolean().nullish(),
});

export const samplingFields = {
  model: z.string().nullish().describe('A served model name (default: the first one).'),
  n: S.n.unwrap().max(MAX_N, `must be at most ${MAX_N}`).nullish(),
  temperature: S.temperature.unwrap().nullish(),
  top_p: S.topP.unwrap().nullish(),
  top_k: S.topK.unwrap().nullish(),
  min_p: S.minP.unwrap().nullish(),
  repetition_penalty: S.repetitionPenalty.unwrap().nullish(),
  frequency_penalty: S.frequencyPenalty.unwrap().nullish(),
  presence_penalty: S.presencePenalty.unwrap().nullish(),
  logit_bias: z
    .record(z.string().regex(/^\d+$/, 'keys must be token ids'), z.number().min(-100, 'must be in [-100, 100]').max(100, 'must be in [-100, 100]'))
    .refine((bias) => Object.keys(bias).length <= MAX_LOGIT_BIAS_ENTRIES, `must have at most ${MAX_LOGIT_BIAS_ENTRIES} entries`)
    .nullish(),
  seed: S.seed.unwrap().nullish(),
  stop: z
    .union([stopString, z.array(stopString).max(MAX_STOP_STRINGS, `must have at most ${MAX_STOP_STRINGS} stop strings`)])
    .nullish(),
  stop_token_ids: tokenIdArray.max(MAX_STOP_TOKEN_IDS, `must have at most ${MAX_STOP_TOKEN_IDS} entries`).nullish(),
  include_stop_str_in_output: z.boolean().nullish(),
  ignore_eos: z.boolean().nullish(),
  min_tokens: S.minTokens.unwrap().nullish(),
  skip_special_tokens: z.boolean().nullish(),
  use_beam_search: z.boolean().nullish().describe('vLLM: deterministic beam search with `n` beams, the n best returned when the search ends.'),
  length_penalty: z.number().refine(Number.isFinite, 'must be finite').nullish().describe('Beam search: score = sum_logprobs / len ** length_penalty.'),
  early_stopping: z.union([z.boolean(), z.literal('never')]).nullish().describe('Beam search: true, false or "never" (HF transformers).'),
  prompt_logprobs: z.number().int('must be an integer').min(0, 'must be >= 0').max(MAX_LOGPROBS, `must be at most ${MAX_LOGPROBS}`).nullish(),
  user: z.string().nullish().describe('Accepted and ignored.'),
  stream: z.boolean().nullish(),
  stream_options: streamOptionsSchema.nullish(),
  cache_salt: z
    .string()
    .min(1, 'must not be empty')
    .max(MAX_CACHE_SALT_LENGTH, `must be at most ${MAX_CACHE_SALT_LENGTH} characters`)
    .nullish()
    .describe('Prefix-cache isolation (vLLM): requests with different salts never share cached KV blocks.'),
};

type SamplingFieldValues = { [K in keyof typeof samplingFields]?: z.output<(typeof samplingFields)[K]> };

/** The sampling fields of a request body as TS-API sampling params (unset and null fields left out). */
export function samplingParamsFrom(body: SamplingFieldValues): SamplingParamsInput {
  const p: SamplingParamsInput = {};
  const set = <K extends keyof SamplingParamsInput>(key: K, value: SamplingParamsInput[K] | null | undefined) => {
    if (value !== undefined && value !== null) p[key] = value;
  };
  set('n', body.n);
  set('temperature', body.temperature);
  set('topP', body.top_p);
  set('topK', body.top_k);
  set('minP', body.min_p);
  set('repetitionPenalty', body.repetition_penalty);
  set('frequencyPenalty', body.frequency_penalty);
  set('presencePenalty', body.presence_penalty);
  set('logitBias', body.logit_bias);
  set('seed', body.seed);
  set('stop', body.stop);
  set('stopTokenIds', body.stop_token_ids);
  set('includeStopStrInOutput', body.include_stop_str_in_output);
  set('ignoreEos', body.ignore_eos);
  set('minTokens', body.min_tokens);
  set('skipSpecialTokens', body.skip_special_tokens);
  set('promptLogprobs', body.prompt_logprobs);
  set('useBeamSearch', body.use_beam_search);
  set('lengthPenalty', body.length_penalty);
  set('earlyStopping', body.early_stopping);
  return p;
}
