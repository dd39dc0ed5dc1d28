/**
 * The default tool-call parser for a chat template, found by rendering a probe conversation (one assistant tool
 * call and its result) and looking at the markers the template writes: a template renders past calls the way its
 * model emits them. Rendering rather than reading the template source also works for templates the server only
 * holds inside the model file. Falls back to hermes, the most common format, when the template shows none or
 * refuses the probe.
 */

import { hermesParser } from './hermes.js';
import { toolParserForTemplate } from './registry.js';
import type { ToolParser } from './types.js';

const PROBE_TOOLS = [
  { type: 'function', function: { name: 'probe_tool', description: 'probe', parameters: { type: 'object', properties: { a: { type: 'integer' } } } } },
];

const PROBE_MESSAGES = [
  { role: 'user', content: 'probe' },
  { role: 'assistant', content: '', tool_calls: [{ id: 'call_probe0001', type: 'function', function: { name: 'probe_tool', arguments: { a: 1 } } }] },
  { role: 'tool', tool_call_id: 'call_probe0001', name: 'probe_tool', content: 'probe result' },
];

export type TemplateRenderer = (messages: Record<string, unknown>[], extra: Record<string, unknown>) => string;

export function detectToolParser(render: TemplateRenderer): ToolParser {
  try {
    return toolParserForTemplate(render(PROBE_MESSAGES, { tools: PROBE_TOOLS })) ?? hermesParser;
  } catch {
    // A template that cannot render tool turns (strict role alternation checks, ...): no format to learn from.
    return hermesParser;
  }
}
