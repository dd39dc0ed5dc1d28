/**
 * Requests with tools: the `tools` / `tool_choice` / `parallel_tool_calls` fields (OpenAI's shapes), what they ask
 * the server to do (`ToolPlan`), the JSON-Schema constraint that enforces `required` and a named function, and the
 * messages and template variables the chat template gets.
 *
 * Follows vLLM's `serving_chat.py` / `protocol.py`: `tool_choice` defaults to "auto" when tools are given and
 * "none" otherwise; "auto" needs the server's `--enable-auto-tool-choice` (400 otherwise, naming the flag);
 * a named function must be one of `tools`; `required` is constrained to a JSON array of
 * `{"name": <one of the tools>, "parameters": <its schema>}` objects and a named function to its parameters
 * schema, so even a model that was never trained on tools returns calls whose arguments validate.
 */

import { z } from 'zod';

import { ValidationError } from '../errors.js';
import type { ToolParser } from './types.js';

/** OpenAI's function-name rule. */
const FUNCTION_NAME = /^[a-zA-Z0-9_-]{1,64}$/;

export const chatToolSchema = z.object({
  type: z.literal('function', { error: 'only "function" tools are supported' }),
  function: z.object({
    name: z.string().regex(FUNCTION_NAME, 'must be 1-64 characters of a-z, A-Z, 0-9, _ and -'),
    description: z.string().nullish(),
    parameters: z.record(z.string(), z.unknown(), { error: 'must be a JSON Schema object' }).nullish(),
    strict: z.boolean().nullish(),
  }),
});

export const toolChoiceSchema = z.union(
  [
    z.enum(['none', 'auto', 'required']),
    z.object({ type: z.literal('function'), function: z.object({ name: z.string() }) }),
  ],
  { error: 'must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}' },
);

export type ChatTool = z.output<typeof chatToolSchema>;
export type ToolChoice = z.output<typeof toolChoiceSchema>;

export type ToolPlan =
  | { mode: 'none' }
  | { mode: 'auto'; parser: ToolParser; parallel: boolean }
  | { mode: 'named'; tool: ChatTool }
  | { mode: 'required'; tools: ChatTool[]; parallel: boolean };

export interface ToolServerConfig {
  /** vLLM's `--enable-auto-tool-choice`: parse calls out of free-form answers when `tool_choice` is "auto". */
  enableAutoToolChoice: boolean;
  /** The parser for "auto" (`--tool-call-parser`, or the one the chat template implies). */
  parser: ToolParser;
}

export function planToolUse(
  request: { tools?: ChatTool[] | null; toolChoice?: ToolChoice | null; parallelToolCalls?: boolean | null },
  server: ToolServerConfig,
): ToolPlan {
  const tools = request.tools ?? [];
  const choice = request.toolChoice ?? (tools.length > 0 ? 'auto' : 'none');
  const parallel = request.parallelToolCalls ?? true;
  const names = new Set<string>();
  tools.forEach((tool, i) => {
    if (names.has(tool.function.name)) {
      throw new ValidationError(`tools[${i}].function.name`, `invalid value for \`tools[${i}].function.name\`: "${tool.function.name}" is defined twice`);
    }
    names.add(tool.function.name);
  });
  if (choice === 'none') return { mode: 'none' };
  if (tools.length === 0) {
    throw new ValidationError('tool_choice', `invalid value for \`tool_choice\`: ${JSON.stringify(choice)} needs \`tools\``);
  }
  if (choice === 'auto') {
    if (!server.enableAutoToolChoice) {
      throw new ValidationError(
        'tool_choice',
        'invalid value for `tool_choice`: "auto" tool choice requires the server to run with --enable-auto-tool-choice ' +
          '(and optionally --tool-call-parser); send "required", a named function or "none" instead',
      );
    }
    return { mode: 'auto', parser: server.parser, parallel };
  }
  if (choice === 'required') return { mode: 'required', tools, parallel };
  const tool = tools.find((t) => t.function.name === choice.function.name);
  if (!tool) {
    throw new ValidationError(
      'tool_choice',
      `invalid value for \`tool_choice\`: function "${choice.function.name}" is not one of \`tools\` (${[...names].join(', ')})`,
    );
  }
  return { mode: 'named', tool };
}

const ANY_OBJECT = { type: 'object' };

function parametersSchema(tool: ChatTool): Record<string, unknown> {
  return tool.function.parameters ?? ANY_OBJECT;
}

/**
 * The JSON Schema the output must follow, or undefined when the output is free. Named: the arguments object
 * itself. Required: `[{"name": ..., "parameters": {...}}, ...]` (one item when `parallel_tool_calls` is false),
 * vLLM's `_get_json_schema_from_tool` shape.
 */
export function toolOutputSchema(plan: ToolPlan): Record<string, unknown> | undefined {
  if (plan.mode === 'named') return parametersSchema(plan.tool);
  if (plan.mode !== 'required') return undefined;
  const items = {
    anyOf: plan.tools.map((tool) => ({
      type: 'object',
      properties: { name: { type: 'string', enum: [tool.function.name] }, parameters: parametersSchema(tool) },
      required: ['name', 'parameters'],
      additionalProperties: false,
    })),
  };
  return { type: 'array', minItems: 1, ...(plan.parallel ? {} : { maxItems: 1 }), items };
}

/**
 * Messages as HF chat templates expect them: an assistant's `tool_calls[].function.arguments` is a JSON string in
 * OpenAI's API but a mapping in templates (`tool_call.arguments | tojson`, `.items()`), so it is parsed here, as
 * vLLM does before rendering. Arguments that are not JSON stay strings.
 */
export function messagesForTemplate<M extends Record<string, unknown>>(messages: M[]): M[] {
  return messages.map((m) => {
    if (!Array.isArray(m.tool_calls)) return m;
    const toolCalls = (m.tool_calls as unknown[]).map((call) => {
      if (typeof call !== 'object' || call === null) return call;
      const fn = (call as { function?: unknown }).function;
      if (typeof fn !== 'object' || fn === null) return call;
      const args = (fn as { arguments?: unknown }).arguments;
      if (typeof args !== 'string') return call;
      try {
        return { ...call, function: { ...fn, arguments: JSON.parse(args) as unknown } };
      } catch {
        return call;
      }
    });
    return { ...m, tool_calls: toolCalls };
  });
}
