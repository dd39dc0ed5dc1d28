/**
 * The tool-call parsers by `--tool-call-parser` name (vLLM's names), and the default picked from a chat template's
 * text when the flag is absent: the marker a template writes for past calls is the one its model emits.
 */

import { hermesParser } from './hermes.js';
import { llama3JsonParser } from './llama3-json.js';
import { mistralParser } from './mistral.js';
import { pythonicParser } from './pythonic.js';
import type { ToolParser } from './types.js';

export const TOOL_PARSERS: Readonly<Record<string, ToolParser>> = {
  hermes: hermesParser,
  llama3_json: llama3JsonParser,
  mistral: mistralParser,
  pythonic: pythonicParser,
};

export const TOOL_PARSER_NAMES = Object.keys(TOOL_PARSERS);

export function toolParserByName(name: string): ToolParser | undefined {
  return Object.hasOwn(TOOL_PARSERS, name) ? TOOL_PARSERS[name] : undefined;
}

/**
 * The parser a chat template implies: `<tool_call>` (Hermes, Qwen) -> hermes, `[TOOL_CALLS]` -> mistral,
 * `<|python_tag|>` or the `ipython` role (Llama 3.x) -> llama3_json, `<|python_start|>` (Llama 4) -> pythonic.
 * Undefined when the template shows no tool format (SmolLM2's, for one); requests then parse with hermes, the most
 * common format.
 */
export function toolParserForTemplate(template: string | null | undefined): ToolParser | undefined {
  if (!template) return undefined;
  if (template.includes('<tool_call>')) return hermesParser;
  if (template.includes('[TOOL_CALLS]')) return mistralParser;
  if (template.includes('<|python_start|>')) return pythonicParser;
  if (template.includes('<|python_tag|>') || template.includes('ipython')) return llama3JsonParser;
  return undefined;
}
