/**
 * Sampling parameters: vLLM's `SamplingParams` with camelCase names. `parseSamplingParams` validates with zod and
 * throws a `ValidationError` naming the first bad field; `toEngineParams` gives the engine's snake_case JSON with
 * only the fields the caller set, so every unset field takes the engine's default (vLLM's: temperature 1.0,
 * maxTokens 16, or what the model's generation config says). The engine validates again; the ranges here mirror
 * `crates/engine/src/sampling_params.rs`.
 */

import { z } from 'zod';

import { ValidationError } from './errors.js';

/** Most top log-probs a request may ask for (OpenAI's limit; the engine's `MAX_LOGPROBS`). */
export const MAX_LOGPROBS = 20;

/** Most beams of one beam search (the engine's `MAX_BEAM_WIDTH`). */
export const MAX_BEAM_WIDTH = 128;

const int = z.number().int('must be an integer');
const tokenId = int.min(0, 'token ids must be >= 0');
const count = (min: number, what: string) => int.min(min, what);

/**
 * A constraint on the output (vLLM's `StructuredOutputsParams`, camelCase): exactly one of `json` (a JSON Schema,
 * as an object or its JSON text), `regex`, `choice`, `grammar` (llguidance's Lark dialect) or `jsonObject` (any
 * JSON object). The engine compiles it with llguidance and rejects an invalid one with a `ValidationError` naming
 * `structuredOutputs.<kind>`.
 */
export const structuredOutputsSchema = z
  .object({
    json: z.union([z.record(z.string(), z.unknown()), z.boolean(), z.string().min(1, 'must not be empty')]),
    regex: z.string().min(1, 'must not be empty'),
    choice: z.array(z.string()).min(1, 'must list at least one choice'),
    grammar: z.string().min(1, 'must not be empty'),
    jsonObject: z.boolean(),
    disableAnyWhitespace: z.boolean(),
  })
  .partial()
  .strict()
  .superRefine((v, ctx) => {
    const kinds = (['json', 'regex', 'choice', 'grammar'] as const).filter((k) => v[k] !== undefined);
    if (v.jsonObject === true) kinds.push('jsonObject' as never);
    if (kinds.length !== 1) {
      ctx.addIssue({
        code: 'custom',
        message:
          kinds.length === 0
            ? 'set exactly one of json, regex, choice, grammar, jsonObject'
            : `set exactly one constraint, got ${kinds.join(', ')}`,
      });
    }
  });

export type StructuredOutputs = z.output<typeof structuredOutputsSchema>;

export const samplingParamsSchema = z
  .object({
    n: count(1, 'must be at least 1'),
    /** Samples generated, of which the `n` with the highest cumulative log-prob are returned (default `n`). */
    bestOf: count(1, 'must be at least 1'),
    temperature: z.number().min(0, 'must be >= 0'),
    topP: z.number().gt(0, 'must be in (0, 1]').max(1, 'must be in (0, 1]'),
    topK: int.min(-1, 'must be -1 (off), 0 (off) or positive'),
    minP: z.number().min(0, 'must be in [0, 1]').max(1, 'must be in [0, 1]'),
    repetitionPenalty: z.number().gt(0, 'must be > 0'),
    frequencyPenalty: z.number().min(-2, 'must be in [-2, 2]').max(2, 'must be in [-2, 2]'),
    presencePenalty: z.number().min(-2, 'must be in [-2, 2]').max(2, 'must be in [-2, 2]'),
    /** Token id -> bias added to its logit. */
    logitBias: z.record(z.string().regex(/^\d+$/, 'keys must be token ids'), z.number()),
    seed: int.min(0, 'must be >= 0').max(Number.MAX_SAFE_INTEGER, 'must be a safe integer'),
    stop: z.union([z.string().min(1, 'stop strings must not be empty'), z.array(z.string().min(1, 'stop strings must not be empty'))]),
    stopTokenIds: z.array(tokenId),
    includeStopStrInOutput: z.boolean(),
    ignoreEos: z.boolean(),
    minTokens: count(0, 'must be >= 0'),
    /** `null` = until the context is full. */
    maxTokens: count(1, 'must be at least 1').nullable(),
    logprobs: int.min(0, 'must be >= 0').max(MAX_LOGPROBS, `must be at most ${MAX_LOGPROBS}`).nullable(),
    promptLogprobs: int.min(0, 'must be >= 0').max(MAX_LOGPROBS, `must be at most ${MAX_LOGPROBS}`).nullable(),
    skipSpecialTokens: z.boolean(),
    /** Constrained decoding (JSON Schema, regex, choice, Lark grammar, any JSON object). */
    structuredOutputs: structuredOutputsSchema,
    /**
     * Deterministic beam search (vLLM V0's `use_beam_search`): `bestOf ?? n` beams, the best `n` returned, all at
     * once when the search ends. Sampling fields (temperature, topP, topK, minP, penalties, seed) are ignored, as
     * in vLLM; `logprobs`, `minTokens` and `structuredOutputs` are refused.
     */
    useBeamSearch: z.boolean(),
    /** Beam search: a finished beam scores `sumLogprobs / generatedLen ** lengthPenalty` (default 1). */
    lengthPenalty: z.number().refine(Number.isFinite, 'must be finite'),
    /** Beam search: `true`, `false` (default) or `'never'`, as HF transformers defines them. */
    earlyStopping: z.union([z.boolean(), z.literal('never')]),
  })
  .partial()
  .strict();

export type SamplingParams = z.output<typeof samplingParamsSchema>;
export type SamplingParamsInput = z.input<typeof samplingParamsSchema>;

/** The first zod issue as a `ValidationError` that names the field and the value it got. */
export function validationErrorFrom(error: z.ZodError, input: unknown, prefix = ''): ValidationError {
  const issue = error.issues[0]!;
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0] ?? 'unknown';
    return new ValidationError(prefix + key, `unknown field \`${prefix + key}\``);
  }
  const field = issue.path.length > 0 ? issue.path.map(String).join('.') : 'params';
  const top = issue.path[0];
  let got: unknown = input;
  if (top !== undefined && typeof input === 'object' && input !== null) got = (input as Record<PropertyKey, unknown>)[top];
  const shown = typeof got === 'number' || typeof got === 'boolean' ? String(got) : JSON.stringify(got);
  const param = prefix + field;
  return new ValidationError(param, `invalid value for \`${param}\`: ${issue.message}, got ${shown}`);
}

export function parseSamplingParams(input: SamplingParamsInput | undefined): SamplingParams {
  const result = samplingParamsSchema.safeParse(input ?? {});
  if (!result.success) throw validationErrorFrom(result.error, input);
  const p = result.data;
  if (p.minTokens !== undefined && p.maxTokens != null && p.minTokens > p.maxTokens) {
    throw new ValidationError(
      'minTokens',
      `invalid value for \`minTokens\`: must be <= maxTokens (${p.maxTokens}), got ${p.minTokens}`,
    );
  }
  if (p.bestOf !== undefined && p.bestOf < (p.n ?? 1)) {
    throw new ValidationError('bestOf', `invalid value for \`bestOf\`: must be >= n (${p.n ?? 1}), got ${p.bestOf}`);
  }
  if (p.useBeamSearch !== true) {
    for (const f of ['lengthPenalty', 'earlyStopping'] as const) {
      if (p[f] !== undefined) throw new ValidationError(f, `\`${f}\` applies to beam search only (set useBeamSearch)`);
    }
  } else {
    if ((p.bestOf ?? p.n ?? 1) > MAX_BEAM_WIDTH) {
      throw new ValidationError(p.bestOf !== undefined ? 'bestOf' : 'n', `beam search keeps at most ${MAX_BEAM_WIDTH} beams`);
    }
    for (const f of ['logprobs', 'minTokens', 'structuredOutputs'] as const) {
      if (p[f] !== undefined && p[f] !== null && p[f] !== 0) throw new ValidationError(f, `\`${f}\` cannot be combined with beam search`);
    }
  }
  return p;
}

/** The engine's `SamplingParams` JSON (snake_case), with only the fields that were set. */
export function toEngineParams(p: SamplingParams): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const set = (key: string, value: unknown) => {
    if (value !== undefined) out[key] = value;
  };
  set('n', p.n);
  if (p.useBeamSearch === true) {
    // The beam width is bestOf when given (vLLM V0), else n; the best n beams come back.
    const beam: Record<string, unknown> = { beam_width: p.bestOf ?? p.n ?? 1 };
    if (p.lengthPenalty !== undefined) beam.length_penalty = p.lengthPenalty;
    if (p.earlyStopping !== undefined) beam.early_stopping = p.earlyStopping;
    out.beam_search = beam;
  } else {
    set('best_of', p.bestOf);
  }
  set('temperature', p.temperature);
  set('top_p', p.topP);
  set('top_k', p.topK);
  set('min_p', p.minP);
  set('repetition_penalty', p.repetitionPenalty);
  set('frequency_penalty', p.frequencyPenalty);
  set('presence_penalty', p.presencePenalty);
  if (p.logitBias !== undefined) out.logit_bias = Object.entries(p.logitBias).map(([id, bias]) => [Number(id), bias]);
  set('seed', p.seed);
  if (p.stop !== undefined) out.stop = typeof p.stop === 'string' ? [p.stop] : p.stop;
  set('stop_token_ids', p.stopTokenIds);
  set('include_stop_str_in_output', p.includeStopStrInOutput);
  set('ignore_eos', p.ignoreEos);
  set('min_tokens', p.minTokens);
  set('max_tokens', p.maxTokens);
  set('logprobs', p.logprobs);
  set('prompt_logprobs', p.promptLogprobs);
  set('skip_special_tokens', p.skipSpecialTokens);
  if (p.structuredOutputs !== undefined) out.structured_outputs = toEngineStructuredOutputs(p.structuredOutputs);
  return out;
}

/** The engine's `StructuredOutputs` JSON (snake_case); a JSON Schema given as text is parsed by the engine. */
export function toEngineStructuredOutputs(s: StructuredOutputs): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (s.json !== undefined) out.json = s.json;
  if (s.regex !== undefined) out.regex = s.regex;
  if (s.choice !== undefined) out.choice = s.choice;
  if (s.grammar !== undefined) out.grammar = s.grammar;
  if (s.jsonObject !== undefined) out.json_object = s.jsonObject;
  if (s.disableAnyWhitespace !== undefined) out.disable_any_whitespace = s.disableAnyWhitespace;
  return out;
}
