/**
 * Token-id clients (vLLM's `--skip-tokenizer-init` and `return_token_ids`). A server started without a tokenizer
 * takes token-id prompts on /v1/completions and returns what it generated as token ids: every choice carries
 * `token_ids` (and `prompt_token_ids`), text fields are empty, and log-prob entries name tokens as `token_id:N`
 * (vLLM's `--return-tokens-as-token-ids` spelling), since there is no text to show. Routes that need text (chat,
 * tokenize, echo, stop strings, structured outputs) answer 400 naming the flag instead of failing later.
 *
 * With a tokenizer, `return_token_ids: true` adds the same fields to completions and chat answers (vLLM #22587):
 * non-streamed choices get `token_ids` (and completions `prompt_token_ids`; chat has it on the response); streamed
 * chunks carry each delta's `token_ids`, and the first chunk of a choice the prompt's ids.
 */

import type { PositionLogprobs } from '../outputs.js';
import { badRequest } from './errors.js';
import type { ServerState } from './state.js';

/** Why a text feature is unavailable, for error messages. */
function noTokenizerReason(state: ServerState): string {
  return state.options.engine.skipTokenizerInit
    ? 'the server was started with --skip-tokenizer-init'
    : 'the engine has none (started with --skip-tokenizer-init, or the model has no tokenizer files)';
}

export function hasTokenizer(state: ServerState): boolean {
  return state.llm.modelInfo.hasTokenizer;
}

/** Throws a 400 naming `param` when the server has no tokenizer (`what` says what needed it). */
export function requireTokenizer(state: ServerState, what: string, param: string | null): void {
  if (hasTokenizer(state)) return;
  throw badRequest(`${what} needs a tokenizer, and ${noTokenizerReason(state)}; send token-id prompts to /v1/completions`, param, 'tokenizer_unavailable');
}

/**
 * Refuses the completions fields that need a tokenizer when there is none: text prompts, `echo` (the prompt's
 * text), stop strings, and constrained decoding (its masks are built from the vocabulary's text).
 */
export function refuseTextFeatures(
  state: ServerState,
  body: { prompt: unknown; echo?: boolean | null; stop?: unknown },
  constrained: boolean,
): void {
  if (hasTokenizer(state)) return;
  const prompts = Array.isArray(body.prompt) ? body.prompt : [body.prompt];
  if (prompts.some((p) => typeof p === 'string')) requireTokenizer(state, 'a text `prompt`', 'prompt');
  if (body.echo) requireTokenizer(state, '`echo`', 'echo');
  const stop = body.stop;
  if (stop !== undefined && stop !== null && !(Array.isArray(stop) && stop.length === 0)) requireTokenizer(state, '`stop` strings', 'stop');
  if (constrained) requireTokenizer(state, 'structured output', 'structured_outputs');
}

/** Whether answers carry token ids: asked for with `return_token_ids`, or always when there is no text. */
export function returnsTokenIds(state: ServerState, requested: boolean | null | undefined): boolean {
  return requested === true || !hasTokenizer(state);
}

/**
 * Log-prob entries with `token_id:N` names when the server has no tokenizer (the engine leaves them empty);
 * unchanged otherwise.
 */
export function namedLogprobs<T extends PositionLogprobs | null>(state: ServerState, positions: T[]): T[] {
  if (hasTokenizer(state)) return positions;
  return positions.map((p) =>
    p === null
      ? p
      : {
          ...p,
          token: `token_id:${p.tokenId}`,
          top: p.top.map((t) => ({ ...t, token: `token_id:${t.tokenId}` })),
        },
  );
}
