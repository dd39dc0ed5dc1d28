/**
 * Tool calling and reasoning for /v1/chat/completions, kept out of the route so the route stays about request
 * flow: what a request's `tools` / `tool_choice` ask for (`chatTooling`), the OpenAI message and delta fields
 * built from a parsed answer (`messageFields`, `deltaFields`), and the `finish_reason` rule (vLLM's
 * `serving_chat.py`: "tool_calls" when calls were returned and the model stopped on its own).
 */

import { type ReasoningParser, reasoningParserByName } from '../reasoning/think-parser.js';
import type { SamplingParamsInput } from '../sampling-params.js';
import type { AnswerDelta, ParsedAnswer } from '../tools/answer.js';
import { enforceToolChoice } from '../tools/constraint.js';
import { detectToolParser } from '../tools/detect.js';
import { toolParserByName } from '../tools/registry.js';
import { type ToolPlan, planToolUse } from '../tools/tool-choice.js';
import type { ToolParser } from '../tools/types.js';
import type { FinishReason } from '../outputs.js';
import { toHttpError } from './errors.js';
import type { ChatRequest } from './schemas/chat.js';
import type { ServerState } from './state.js';

interface ServerTooling {
  parser: ToolParser;
  reasoning: ReasoningParser | null;
}

const perServer = new WeakMap<ServerState, ServerTooling>();

/** The server's tool parser (flag, else detected from its chat template once) and reasoning parser. */
function serverTooling(state: ServerState): ServerTooling {
  let tooling = perServer.get(state);
  if (!tooling) {
    const { toolCallParser, reasoningParser, chatTemplate } = state.options;
    const parser =
      (toolCallParser !== null ? toolParserByName(toolCallParser) : undefined) ??
      detectToolParser((messages, extra) =>
        state.llm.applyChatTemplate(messages as never, { chatTemplate: chatTemplate ?? undefined, chatTemplateKwargs: extra }),
      );
    tooling = { parser, reasoning: reasoningParser !== null ? (reasoningParserByName(reasoningParser) ?? null) : null };
    perServer.set(state, tooling);
  }
  return tooling;
}

export interface ChatTooling {
  plan: ToolPlan;
  reasoning: ReasoningParser | null;
  /** Template variables to add (`tools`), merged under the request's `chat_template_kwargs`. */
  templateKwargs: Record<string, unknown> | undefined;
  /** The request's sampling parameters with the tool constraint and the parser's token needs applied. */
  adjustParams(params: SamplingParamsInput): SamplingParamsInput;
}

export function chatTooling(state: ServerState, body: ChatRequest): ChatTooling {
  const server = serverTooling(state);
  let plan: ToolPlan;
  try {
    plan = planToolUse(
      { tools: body.tools, toolChoice: body.tool_choice, parallelToolCalls: body.parallel_tool_calls },
      { enableAutoToolChoice: state.options.enableAutoToolChoice, parser: server.parser },
    );
  } catch (err) {
    throw toHttpError(err);
  }
  const tools = body.tools && body.tools.length > 0 ? body.tools : undefined;
  const templateKwargs = tools || body.chat_template_kwargs ? { ...(tools ? { tools } : {}), ...(body.chat_template_kwargs ?? {}) } : undefined;
  return {
    plan,
    reasoning: server.reasoning,
    templateKwargs,
    adjustParams(params) {
      let adjusted = params;
      try {
        adjusted = enforceToolChoice(params, plan);
      } catch (err) {
        throw toHttpError(err);
      }
      // Markers such as [TOOL_CALLS] are special tokens: keep them in the text unless the client chose otherwise.
      if (plan.mode === 'auto' && plan.parser.needsSpecialTokens && body.skip_special_tokens == null) {
        adjusted = { ...adjusted, skipSpecialTokens: false };
      }
      return adjusted;
    },
  };
}

/** `message` of a non-streamed choice. */
export function messageFields(answer: ParsedAnswer, reasoning: boolean): Record<string, unknown> {
  const message: Record<string, unknown> = { role: 'assistant', content: answer.content };
  if (reasoning) message.reasoning_content = answer.reasoningContent;
  if (answer.toolCalls.length > 0) message.tool_calls = answer.toolCalls;
  return message;
}

/** `delta` of a streamed chunk; empty parts are left out. */
export function deltaFields(delta: AnswerDelta): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (delta.reasoningContent !== '') out.reasoning_content = delta.reasoningContent;
  if (delta.content !== '') out.content = delta.content;
  if (delta.toolCalls.length > 0) out.tool_calls = delta.toolCalls;
  return out;
}

export function joinDeltas(a: AnswerDelta, b: AnswerDelta): AnswerDelta {
  return { reasoningContent: a.reasoningContent + b.reasoningContent, content: a.content + b.content, toolCalls: [...a.toolCalls, ...b.toolCalls] };
}

export function chatFinishReason(reason: FinishReason | null, callCount: number): FinishReason | 'tool_calls' | null {
  return reason === 'stop' && callCount > 0 ? 'tool_calls' : reason;
}
