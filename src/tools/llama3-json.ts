/**
 * `llama3_json`: Llama 3.1/3.2/3.3 JSON tool calls. The whole answer is the calls: optionally `<|python_tag|>`,
 * then one or more `{"name": ..., "parameters": {...}}` objects separated by `;`. An answer that does not start
 * that way is plain content (vLLM's `llama_tool_parser.py` makes the same whole-output decision). While only
 * whitespace has arrived, nothing is shown: the first real character decides.
 */

import { type OutputScan, RescanStream, extractWith, scanCallObjects } from './call-scan.js';
import { type ToolParser, partialMarkerSuffix } from './types.js';

const PYTHON_TAG = '<|python_tag|>';

export function scanLlama3Json(text: string, final: boolean): OutputScan {
  const start = text.trimStart();
  if (start === '' || (!final && partialMarkerSuffix(start, PYTHON_TAG) === start.length)) {
    return { content: final ? text : '', calls: [], invalid: false };
  }
  let region: string;
  if (start.startsWith(PYTHON_TAG)) region = start.slice(PYTHON_TAG.length);
  else if (start.startsWith('{')) region = start;
  else return { content: text, calls: [], invalid: false };
  const scanned = scanCallObjects(region, ';,');
  return { content: '', calls: scanned.calls, invalid: scanned.invalid || (final && !scanned.complete) };
}

export const llama3JsonParser: ToolParser = {
  name: 'llama3_json',
  needsSpecialTokens: true,
  extract: (text) => extractWith(scanLlama3Json, text),
  stream: () => new RescanStream(scanLlama3Json),
};
