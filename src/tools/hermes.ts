/**
 * `hermes`: calls written as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks, the format of
 * Hermes-2/3, Qwen2.5 and Qwen3 chat templates. Any number of blocks; text around them is content. A block still
 * open when the output ends (cut by max_tokens) keeps what parsed so far in streaming, and makes the non-streamed
 * extraction fall back to plain content, as vLLM's `hermes_tool_parser.py` does.
 */

import { type CallScan, type OutputScan, RescanStream, extractWith, scanCallObjects } from './call-scan.js';
import { type ToolParser, partialMarkerSuffix } from './types.js';

const OPEN = '<tool_call>';
const CLOSE = '</tool_call>';

export function scanHermes(text: string, final: boolean): OutputScan {
  let content = '';
  const calls: CallScan[] = [];
  let pos = 0;
  for (;;) {
    const open = text.indexOf(OPEN, pos);
    if (open < 0) {
      const rest = text.slice(pos);
      content += final ? rest : rest.slice(0, rest.length - partialMarkerSuffix(rest, OPEN));
      return { content, calls, invalid: false };
    }
    content += text.slice(pos, open);
    const bodyStart = open + OPEN.length;
    const close = text.indexOf(CLOSE, bodyStart);
    const body = close < 0 ? text.slice(bodyStart) : text.slice(bodyStart, close);
    const scanned = scanCallObjects(body, '');
    calls.push(...scanned.calls);
    if (scanned.invalid) return { content, calls, invalid: true };
    if (close < 0) return { content, calls, invalid: final };
    if (!scanned.complete) return { content, calls, invalid: true };
    pos = close + CLOSE.length;
  }
}

export const hermesParser: ToolParser = {
  name: 'hermes',
  needsSpecialTokens: false,
  extract: (text) => extractWith(scanHermes, text),
  stream: () => new RescanStream(scanHermes),
};
