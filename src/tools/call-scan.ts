/**
 * Scanning function calls out of text that may still be growing. Parsers describe an output as content plus a list
 * of `CallScan`s (what is known so far of each call); `RescanStream` turns successive descriptions into OpenAI
 * deltas by diffing them against what it already sent, so every parser's streaming and non-streaming paths share
 * one description and cannot disagree.
 *
 * The JSON scanner is hand-written because it must work on a *prefix* of a JSON document and report positions
 * (where the `arguments` value starts, whether it has ended): `JSON.parse` only takes complete text. vLLM uses the
 * `partial_json_parser` package for the same job and diffs re-serialized arguments; we stream the model's own
 * argument text instead, so the fragments always concatenate to exactly the JSON the model wrote.
 */

import { EMPTY_OUTPUT, type StreamedToolOutput, type ToolCall, type ToolCallDelta, type ToolCallStream, newToolCallId } from './types.js';

/** What is known of one call so far. */
export interface CallScan {
  /** The function name, once it is complete. */
  name: string | undefined;
  /** The arguments JSON text seen so far (grows by appending). */
  args: string;
  /** True once the arguments (and so the call) are complete. */
  complete: boolean;
}

/** A parser's reading of an output (or of a prefix of one, when `final` was false). */
export interface OutputScan {
  /** Content text that is safe to show: text that might still turn into a call marker is held back. */
  content: string;
  calls: CallScan[];
  /** The call region did not parse as calls (extract then returns the whole text as content). */
  invalid: boolean;
}

export type Scanner = (text: string, final: boolean) => OutputScan;

const WS = new Set([' ', '\t', '\n', '\r']);

export function skipWhitespace(text: string, pos: number): number {
  while (pos < text.length && WS.has(text[pos]!)) pos++;
  return pos;
}

/** End (exclusive) of the JSON string starting at `pos` (a `"`), or -1 if the text ends inside it. */
function scanString(text: string, pos: number): number {
  for (let i = pos + 1; i < text.length; i++) {
    const c = text[i];
    if (c === '\\') i++;
    else if (c === '"') return i + 1;
  }
  return -1;
}

export const INCOMPLETE = -1;
export const INVALID = -2;

/**
 * End (exclusive) of the JSON value starting at `pos`: `INCOMPLETE` when the text ends inside it (a number at the
 * very end counts as incomplete: more digits may follow), `INVALID` when it is not JSON. Checks structure
 * (brackets, strings, literal characters), not every detail; `JSON.parse` validates complete values afterwards.
 */
export function scanJsonValue(text: string, pos: number): number {
  const c = text[pos];
  if (c === undefined) return INCOMPLETE;
  if (c === '"') return scanString(text, pos);
  if (c === '{' || c === '[') {
    const stack: string[] = [c === '{' ? '}' : ']'];
    for (let i = pos + 1; i < text.length; i++) {
      const d = text[i]!;
      if (d === '"') {
        const end = scanString(text, i);
        if (end < 0) return INCOMPLETE;
        i = end - 1;
      } else if (d === '{') stack.push('}');
      else if (d === '[') stack.push(']');
      else if (d === '}' || d === ']') {
        if (stack.pop() !== d) return INVALID;
        if (stack.length === 0) return i + 1;
      } else if (!/[\s,:0-9eE.+\-a-z]/.test(d)) return INVALID;
    }
    return INCOMPLETE;
  }
  if (/[-0-9tfn]/.test(c)) {
    let i = pos;
    while (i < text.length && /[-+0-9.eEtruefalsn]/.test(text[i]!)) i++;
    return i === text.length ? INCOMPLETE : i;
  }
  return INVALID;
}

/** One `{...}` call object: `{"name": ..., "arguments" | "parameters": {...}}` (any key order, other keys ignored). */
export interface CallObjectScan extends CallScan {
  /** End (exclusive) of the object, or INCOMPLETE / INVALID. */
  end: number;
}

const ARGUMENT_KEYS = new Set(['arguments', 'parameters']);

function parseJson(text: string): { ok: true; value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false };
  }
}

/** Reads the call object starting at `pos` (a `{`) as far as the text goes. */
export function scanCallObject(text: string, pos: number): CallObjectScan {
  const scan: CallObjectScan = { name: undefined, args: '', complete: false, end: INCOMPLETE };
  let argsSeen = false;
  let i = pos + 1;
  for (;;) {
    i = skipWhitespace(text, i);
    if (i >= text.length) return scan;
    if (text[i] === '}') break;
    if (text[i] !== '"') return { ...scan, end: INVALID };
    const keyEnd = scanString(text, i);
    if (keyEnd < 0) return scan;
    const key = parseJson(text.slice(i, keyEnd));
    if (!key.ok) return { ...scan, end: INVALID };
    i = skipWhitespace(text, keyEnd);
    if (i >= text.length) return scan;
    if (text[i] !== ':') return { ...scan, end: INVALID };
    const valueStart = skipWhitespace(text, i + 1);
    const valueEnd = scanJsonValue(text, valueStart);
    if (valueEnd === INVALID) return { ...scan, end: INVALID };
    if (key.value === 'name') {
      if (valueEnd === INCOMPLETE) return scan;
      const name = parseJson(text.slice(valueStart, valueEnd));
      if (!name.ok || typeof name.value !== 'string') return { ...scan, end: INVALID };
      scan.name = name.value;
    } else if (typeof key.value === 'string' && ARGUMENT_KEYS.has(key.value)) {
      argsSeen = true;
      const isStructured = text[valueStart] === '{' || text[valueStart] === '[';
      if (valueEnd === INCOMPLETE) {
        // Arguments sent as a JSON-encoded string are decoded once complete; objects stream as they grow.
        if (isStructured) scan.args = text.slice(valueStart);
        return scan;
      }
      const raw = text.slice(valueStart, valueEnd);
      const parsed = parseJson(raw);
      if (!parsed.ok) return { ...scan, end: INVALID };
      scan.args = isStructured ? raw : typeof parsed.value === 'string' ? parsed.value : raw;
    } else if (valueEnd === INCOMPLETE) return scan;
    i = skipWhitespace(text, valueEnd);
    if (i >= text.length) return scan;
    if (text[i] === ',') {
      i++;
      continue;
    }
    if (text[i] !== '}') return { ...scan, end: INVALID };
    break;
  }
  if (scan.name === undefined) return { ...scan, end: INVALID };
  if (!argsSeen) scan.args = '{}';
  return { ...scan, complete: true, end: i + 1 };
}

/**
 * Reads a run of call objects separated by whitespace and any of `separators` (`,` `;` for lists, `[` `]` when
 * the calls sit in a JSON array). `invalid` when something else appears.
 */
export function scanCallObjects(text: string, separators: string): { calls: CallScan[]; invalid: boolean; complete: boolean } {
  const calls: CallScan[] = [];
  let i = 0;
  for (;;) {
    while (i < text.length && (WS.has(text[i]!) || separators.includes(text[i]!))) i++;
    if (i >= text.length) return { calls, invalid: false, complete: true };
    if (text[i] !== '{') return { calls, invalid: true, complete: false };
    const scan = scanCallObject(text, i);
    if (scan.end === INVALID) return { calls, invalid: true, complete: false };
    calls.push({ name: scan.name, args: scan.args, complete: scan.complete });
    if (scan.end === INCOMPLETE) return { calls, invalid: false, complete: false };
    i = scan.end;
  }
}

/** Non-streamed extraction from a scanner: whole text as content when the calls do not parse. */
export function extractWith(scanner: Scanner, text: string): { content: string | null; toolCalls: ToolCall[] } {
  const scan = scanner(text, true);
  const usable = !scan.invalid && scan.calls.every((c) => c.complete && c.name !== undefined && parseJson(c.args).ok);
  if (!usable || scan.calls.length === 0) return { content: text, toolCalls: [] };
  const content = scan.content.trim();
  return {
    content: content === '' ? null : content,
    toolCalls: scan.calls.map((c) => ({ id: newToolCallId(), type: 'function', function: { name: c.name!, arguments: c.args } })),
  };
}

interface SentCall {
  id: string;
  argsSent: number;
}

/**
 * Streaming by re-scanning: each push scans the whole text so far and sends what is new since the last scan
 * (content suffix, new calls' id + name, argument fragments). Quadratic in the output length, which is fine for
 * chat answers (a 4,000-token answer re-scans a few MB in total) and keeps each parser a pure function of text.
 */
export class RescanStream implements ToolCallStream {
  private text = '';
  private contentSent = 0;
  private readonly sent: SentCall[] = [];
  private done = false;

  constructor(private readonly scanner: Scanner) {}

  get callCount(): number {
    return this.sent.length;
  }

  push(delta: string): StreamedToolOutput {
    if (this.done) return EMPTY_OUTPUT;
    this.text += delta;
    return this.diff(this.scanner(this.text, false));
  }

  finish(): StreamedToolOutput {
    if (this.done) return EMPTY_OUTPUT;
    this.done = true;
    const scan = this.scanner(this.text, true);
    const out = this.diff(scan);
    // A call region that never parsed (and produced no call) is the model's text after all: show it. With no call
    // sent, all content sent so far came before the region, so it is a prefix of the text and the rest follows it.
    if (scan.invalid && this.sent.length === 0 && out.toolCalls.length === 0) {
      out.content += this.text.slice(this.contentSent);
      this.contentSent = this.text.length;
    }
    return out;
  }

  private diff(scan: OutputScan): StreamedToolOutput {
    let content = '';
    if (scan.content.length > this.contentSent) {
      content = scan.content.slice(this.contentSent);
      this.contentSent = scan.content.length;
    }
    const toolCalls: ToolCallDelta[] = [];
    scan.calls.forEach((call, index) => {
      if (call.name === undefined) return;
      let sent = this.sent[index];
      if (!sent) {
        if (index !== this.sent.length) return; // calls are announced in order
        sent = { id: newToolCallId(), argsSent: 0 };
        this.sent.push(sent);
        toolCalls.push({ index, id: sent.id, type: 'function', function: { name: call.name, arguments: '' } });
      }
      if (call.args.length > sent.argsSent) {
        const fragment = call.args.slice(sent.argsSent);
        sent.argsSent = call.args.length;
        const last = toolCalls[toolCalls.length - 1];
        if (last && last.index === index) last.function.arguments += fragment;
        else toolCalls.push({ index, function: { arguments: fragment } });
      }
    });
    return { content, toolCalls };
  }
}
