/**
 * Per-request caps of the HTTP server: how much one request may ask for, so that no client can make the server
 * (or the engine) do unbounded work with one body. Each cap is enforced by the zod schemas (a 400 naming the field)
 * or, for what a schema cannot see (nesting depth, total prompt tokens), by `request.ts` and the routes. The values
 * follow OpenAI's limits where OpenAI has one (`n` 128, `logprobs`/`top_logprobs` 20) and are generous elsewhere;
 * the README's "Security and limits" section lists them.
 */

import { MAX_LOGPROBS } from '../sampling-params.js';

export { MAX_LOGPROBS };

/** Prompts in one /v1/completions request (each becomes an engine request). */
export const MAX_PROMPTS_PER_REQUEST = 256;
/** Messages in one chat request (or /tokenize request). */
export const MAX_MESSAGES = 2048;
/** Content parts in one message. */
export const MAX_CONTENT_PARTS = 256;
/** Samples per prompt (OpenAI's limit); the engine also caps it at `max_num_seqs`. */
export const MAX_N = 128;
/** Stop strings per request, and the longest one (characters). */
export const MAX_STOP_STRINGS = 16;
export const MAX_STOP_STRING_LENGTH = 1024;
/** `stop_token_ids` entries. */
export const MAX_STOP_TOKEN_IDS = 256;
/** `logit_bias` entries. */
export const MAX_LOGIT_BIAS_ENTRIES = 1024;
/** Nesting depth of a JSON body (objects and arrays); deeper bodies are refused before they are parsed. */
export const MAX_JSON_DEPTH = 64;
/** Longest `cache_salt`. */
export const MAX_CACHE_SALT_LENGTH = 256;
/** Default of `--max-request-prompt-tokens`: prompt tokens summed over the prompts of one request. */
export const DEFAULT_MAX_REQUEST_PROMPT_TOKENS = 65_536;
/** Default of `--max-waiting`: engine requests that may wait for their first token before new ones get 503. */
export const DEFAULT_MAX_WAITING = 512;

/**
 * The nesting depth of a JSON text, found by one linear scan (strings skipped), so that a deeply nested body is
 * refused before `JSON.parse` and before anything recursive (zod, JSON.stringify) walks it. Hand-written because
 * the point is to look before parsing; malformed text is left for `JSON.parse` to report.
 */
export function jsonDepth(text: string, stopAbove = Infinity): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c /* \ */) i++;
      else if (c === 0x22 /* " */) inString = false;
      continue;
    }
    if (c === 0x22) inString = true;
    else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      depth++;
      if (depth > max) {
        max = depth;
        if (max > stopAbove) return max;
      }
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) depth--;
  }
  return max;
}
