/**
 * Request fields that OpenAI or vLLM define but this server does not implement yet. A request that sets one (to
 * anything but its neutral value) is refused with 400 `unsupported_parameter` naming it, instead of the field being
 * dropped silently and the client getting a different behaviour than it asked for. One entry per field: when a
 * feature is implemented, delete its entry here (and add the field to the route's zod schema).
 *
 * Checked on the raw body before zod strips unknown keys (`refuseUnsupportedFields`, called by the generation
 * routes). Fields the server accepts and ignores on purpose (`user`, `store`, `metadata`, `service_tier`) are not
 * listed: ignoring them changes nothing the client can observe in the output.
 */

import { notSupported } from './errors.js';

export type Endpoint = 'completions' | 'chat';

interface UnsupportedField {
  /** The request field, as clients send it (snake_case). */
  field: string;
  /** Which endpoints refuse it. */
  endpoints: readonly Endpoint[];
  /** Values that ask for nothing (the default): accepted. `null` is always accepted. */
  neutral?: (value: unknown) => boolean;
  /** What the field asks for, for the error message. */
  what: string;
}

const both: readonly Endpoint[] = ['completions', 'chat'];
const isFalse = (v: unknown) => v === false;
const isZero = (v: unknown) => v === 0;
const isTrue = (v: unknown) => v === true;
const isEmpty = (v: unknown) => (Array.isArray(v) && v.length === 0) || (typeof v === 'object' && v !== null && Object.keys(v).length === 0);

export const UNSUPPORTED_FIELDS: readonly UnsupportedField[] = [
  // Structured outputs are implemented (structured-outputs.ts, which also refuses `guided_decoding_backend` values
  // other than ours); a custom whitespace regex is not.
  { field: 'guided_whitespace_pattern', endpoints: both, what: '(custom JSON whitespace)' },
  // Sampling and decoding features the engine does not have.
  { field: 'bad_words', endpoints: both, neutral: isEmpty, what: '' },
  { field: 'allowed_token_ids', endpoints: both, neutral: isEmpty, what: '' },
  { field: 'logits_processors', endpoints: both, neutral: isEmpty, what: '' },
  { field: 'truncate_prompt_tokens', endpoints: both, what: '(prompt truncation)' },
  { field: 'spaces_between_special_tokens', endpoints: both, neutral: isTrue, what: 'set to false' },
  { field: 'return_tokens_as_token_ids', endpoints: both, neutral: isFalse, what: '' },
  { field: 'prompt_embeds', endpoints: ['completions'], what: '' },
  // Scheduling: the server runs first-come-first-served (no --scheduling-policy flag yet).
  { field: 'priority', endpoints: both, neutral: isZero, what: '(priority scheduling)' },
  { field: 'kv_transfer_params', endpoints: both, what: '(disaggregated serving)' },
  // Chat features beyond text-in, text-out.
  { field: 'documents', endpoints: ['chat'], neutral: isEmpty, what: '(RAG documents)' },
  { field: 'mm_processor_kwargs', endpoints: both, neutral: isEmpty, what: '(multimodal input)' },
  { field: 'modalities', endpoints: ['chat'], neutral: (v) => Array.isArray(v) && v.every((m) => m === 'text'), what: 'other than ["text"]' },
  { field: 'audio', endpoints: ['chat'], what: '(audio output)' },
  { field: 'prediction', endpoints: ['chat'], what: '(predicted outputs)' },
  { field: 'web_search_options', endpoints: ['chat'], what: '(web search)' },
  { field: 'functions', endpoints: ['chat'], neutral: isEmpty, what: '(legacy function calling)' },
  { field: 'function_call', endpoints: ['chat'], neutral: (v) => v === 'none', what: '(legacy function calling)' },
  { field: 'reasoning_effort', endpoints: ['chat'], what: '(reasoning models)' },
];

/** Throws a 400 `unsupported_parameter` for the first listed field `body` sets to a non-neutral value. */
export function refuseUnsupportedFields(body: unknown, endpoint: Endpoint): void {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return;
  const fields = body as Record<string, unknown>;
  for (const entry of UNSUPPORTED_FIELDS) {
    if (!entry.endpoints.includes(endpoint) || !Object.hasOwn(fields, entry.field)) continue;
    const value = fields[entry.field];
    if (value === null || value === undefined || entry.neutral?.(value)) continue;
    throw notSupported(entry.field, entry.what);
  }
}
