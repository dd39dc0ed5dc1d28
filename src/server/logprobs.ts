/**
 * Log-probs in the two OpenAI wire formats. Completions: parallel arrays `tokens`, `token_logprobs`,
 * `top_logprobs` (token -> logprob dicts, the chosen token included as vLLM does) and `text_offset` (character
 * offsets into the choice's text, continuing across stream chunks). Chat: `content: [{token, logprob, bytes,
 * top_logprobs: [{token, logprob, bytes}]}]`. Non-finite log-probs are sent as -9999 (JSON has no -Infinity).
 */

import type { PositionLogprobs } from '../outputs.js';

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

export interface ChatTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

export const finiteLogprob = (x: number): number => (Number.isFinite(x) ? x : -9999);

/** Builds completions-format log-probs; `offset` is where the first token starts in the choice's text. */
export class CompletionLogprobsBuilder {
  constructor(private offset = 0) {}

  /** Adds positions; `null` positions (the first prompt token) get a null log-prob and no alternatives. */
  build(positions: (PositionLogprobs | null)[], tokenText: (i: number) => string, topCount: number): CompletionLogprobs {
    const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    positions.forEach((p, i) => {
      const token = p?.token ?? tokenText(i);
      out.tokens.push(token);
      out.text_offset.push(this.offset);
      this.offset += token.length;
      if (p === null) {
        out.token_logprobs.push(null);
        out.top_logprobs.push(null);
        return;
      }
      out.token_logprobs.push(finiteLogprob(p.logprob));
      const top: Record<string, number> = {};
      for (const t of p.top.slice(0, topCount)) top[t.token] = finiteLogprob(t.logprob);
      top[p.token] ??= finiteLogprob(p.logprob);
      out.top_logprobs.push(top);
    });
    return out;
  }
}

export function concatCompletionLogprobs(a: CompletionLogprobs, b: CompletionLogprobs): CompletionLogprobs {
  return {
    tokens: [...a.tokens, ...b.tokens],
    token_logprobs: [...a.token_logprobs, ...b.token_logprobs],
    top_logprobs: [...a.top_logprobs, ...b.top_logprobs],
    text_offset: [...a.text_offset, ...b.text_offset],
  };
}

export function chatLogprobs(positions: PositionLogprobs[], topCount: number): ChatTokenLogprob[] {
  return positions.map((p) => ({
    token: p.token,
    logprob: finiteLogprob(p.logprob),
    bytes: p.bytes,
    top_logprobs: p.top.slice(0, topCount).map((t) => ({ token: t.token, logprob: finiteLogprob(t.logprob), bytes: t.bytes })),
  }));
}

/** vLLM's `prompt_logprobs` field: per position null (first) or `{token_id: {logprob, rank, decoded_token}}`. */
export function vllmPromptLogprobs(
  positions: (PositionLogprobs | null)[],
): (Record<string, { logprob: number; rank: number | null; decoded_token: string }> | null)[] {
  return positions.map((p) => {
    if (p === null) return null;
    const entry: Record<string, { logprob: number; rank: number | null; decoded_token: string }> = {};
    entry[String(p.tokenId)] = { logprob: finiteLogprob(p.logprob), rank: p.rank, decoded_token: p.token };
    p.top.forEach((t, i) => {
      entry[String(t.tokenId)] ??= { logprob: finiteLogprob(t.logprob), rank: i + 1, decoded_token: t.token };
    });
    return entry;
  });
}
