/**
 * What every tool-call parser produces, in OpenAI's shapes. A parser turns a model's answer text into content plus
 * function calls, either all at once (`extract`, for non-streamed responses) or delta by delta (`ToolCallStream`, for
 * SSE). Streamed tool-call deltas follow OpenAI's protocol, which the official SDKs reassemble: the first delta of a
 * call carries `index`, `id`, `type` and `function.name` (with `arguments: ""`), later deltas of the same `index`
 * carry only `function.arguments` fragments whose concatenation is the call's arguments JSON.
 *
 * Design follows vLLM's `vllm/entrypoints/openai/tool_parsers/abstract_tool_parser.py` (`extract_tool_calls` and
 * `extract_tool_calls_streaming`); the code is our own.
 */

import { randomBytes } from 'node:crypto';

/** A complete call, as in a non-streamed `message.tool_calls[]`. */
export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

/** One entry of a streamed `delta.tool_calls[]`. */
export interface ToolCallDelta {
  index: number;
  id?: string;
  type?: 'function';
  function: { name?: string; arguments: string };
}

export interface ExtractedToolCalls {
  /** The text around the calls (null when there is none, as OpenAI sends when a message is only calls). */
  content: string | null;
  toolCalls: ToolCall[];
}

/** What one streamed text delta turned into. Either part may be empty. */
export interface StreamedToolOutput {
  content: string;
  toolCalls: ToolCallDelta[];
}

/** Incremental parser for one choice: fed the text deltas in order, then `finish()` once the output ended. */
export interface ToolCallStream {
  push(text: string): StreamedToolOutput;
  /** Flushes text held back (a partial marker that never completed, an unparsable call region) as content. */
  finish(): StreamedToolOutput;
  /** How many calls were emitted so far (finish_reason becomes "tool_calls" when > 0). */
  readonly callCount: number;
}

export interface ToolParser {
  /** The `--tool-call-parser` name (vLLM's). */
  readonly name: string;
  /**
   * The parser's markers are special tokens that detokenization would drop (`[TOOL_CALLS]`, `<|python_tag|>`), so
   * requests it parses must keep special tokens in the text (vLLM's `adjust_request` does the same).
   */
  readonly needsSpecialTokens: boolean;
  extract(text: string): ExtractedToolCalls;
  stream(): ToolCallStream;
}

/** `call_` + 24 random alphanumerics, the shape OpenAI's ids have. */
export function newToolCallId(): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = randomBytes(24);
  let id = 'call_';
  for (const b of bytes) id += alphabet[b % alphabet.length];
  return id;
}

export const EMPTY_OUTPUT: StreamedToolOutput = Object.freeze({ content: '', toolCalls: [] }) as StreamedToolOutput;

/** Length of the longest suffix of `text` that is a proper prefix of `marker` (text that might become the marker). */
export function partialMarkerSuffix(text: string, marker: string): number {
  for (let len = Math.min(marker.length - 1, text.length); len > 0; len--) {
    if (marker.startsWith(text.slice(text.length - len))) return len;
  }
  return 0;
}
