/**
 * `mistral`: calls after the `[TOOL_CALLS]` special token, either as a JSON array
 * (`[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`, Mistral tokenizer v3-v7) or, from tokenizer v11 on, as
 * `[TOOL_CALLS]name[ARGS]{...}` repeated. Text before the first marker is content. `[TOOL_CALLS]` is a special
 * token, so requests parsed this way keep special tokens in the text (vLLM's `mistral_tool_parser.py`
 * `adjust_request`).
 */

import { type CallScan, INCOMPLETE, INVALID, type OutputScan, RescanStream, extractWith, scanCallObjects, scanJsonValue, skipWhitespace } from './call-scan.js';
import { type ToolParser, partialMarkerSuffix } from './types.js';

const MARKER = '[TOOL_CALLS]';
const ARGS = '[ARGS]';

/** The v11 form: `name[ARGS]{json}` after each marker. */
function scanNamedForm(region: string, final: boolean): { calls: CallScan[]; invalid: boolean } {
  const calls: CallScan[] = [];
  for (const part of region.split(MARKER)) {
    if (part.trim() === '') continue;
    const argsAt = part.indexOf(ARGS);
    if (argsAt < 0) return { calls, invalid: final || !/^[\w.-]*$/.test(part.trim()) };
    const name = part.slice(0, argsAt).trim();
    if (!/^[\w.-]+$/.test(name)) return { calls, invalid: true };
    const argsStart = skipWhitespace(part, argsAt + ARGS.length);
    const end = scanJsonValue(part, argsStart);
    if (end === INVALID) return { calls, invalid: true };
    if (end === INCOMPLETE) {
      calls.push({ name, args: part.slice(argsStart), complete: false });
      return { calls, invalid: final };
    }
    if (part.slice(end).trim() !== '') return { calls, invalid: true };
    calls.push({ name, args: part.slice(argsStart, end), complete: true });
  }
  return { calls, invalid: false };
}

export function scanMistral(text: string, final: boolean): OutputScan {
  const at = text.indexOf(MARKER);
  if (at < 0) {
    const held = final ? 0 : partialMarkerSuffix(text, MARKER);
    return { content: text.slice(0, text.length - held), calls: [], invalid: false };
  }
  const content = text.slice(0, at);
  const region = text.slice(at + MARKER.length);
  const first = region.trimStart()[0];
  if (first === undefined) return { content, calls: [], invalid: final };
  if (first === '[' || first === '{') {
    const scanned = scanCallObjects(region.split(MARKER).join(''), '[],');
    return { content, calls: scanned.calls, invalid: scanned.invalid || (final && !scanned.complete) };
  }
  const named = scanNamedForm(region, final);
  return { content, calls: named.calls, invalid: named.invalid };
}

export const mistralParser: ToolParser = {
  name: 'mistral',
  needsSpecialTokens: true,
  extract: (text) => extractWith(scanMistral, text),
  stream: () => new RescanStream(scanMistral),
};
