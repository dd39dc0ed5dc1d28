/**
 * Tools in the TypeScript API's `LLM.chat` (vLLM's `LLM.chat(messages, tools=...)`, plus what vLLM leaves to the
 * server: tool_choice enforcement and parsing the calls out of the answer). There is no server flag here, so
 * `toolChoice: "auto"` is always allowed; the parser is `toolCallParser` or the one the chat template implies.
 */

import { ValidationError } from '../errors.js';
import type { CompletionOutput, StreamDelta } from '../outputs.js';
import { type ReasoningParser, reasoningParserByName } from '../reasoning/think-parser.js';
import { REASONING_PARSER_NAMES } from '../reasoning/think-parser.js';
import type { SamplingParamsInput } from '../sampling-params.js';
import { AnswerStream, parseAnswer } from './answer.js';
import { enforceToolChoice } from './constraint.js';
import { TOOL_PARSER_NAMES, toolParserByName } from './registry.js';
import { type ChatTool, type ToolChoice, type ToolPlan, chatToolSchema, planToolUse, toolChoiceSchema } from './tool-choice.js';
import type { ToolCall, ToolCallDelta, ToolParser } from './types.js';

export interface ChatToolOptions {
  /** Functions the model may call (OpenAI's `tools`); also passed to the chat template as `tools`. */
  tools?: ChatTool[];
  /** "none" | "auto" (default with tools) | "required" | `{type: "function", function: {name}}`. */
  toolChoice?: ToolChoice;
  /** false: at most one call. Default true. */
  parallelToolCalls?: boolean;
  /** `hermes`, `llama3_json`, `mistral` or `pythonic`; default: the one the chat template implies, else hermes. */
  toolCallParser?: string;
  /** `qwen3` or `deepseek_r1`: split `<think>` reasoning into `reasoningContent`. */
  reasoningParser?: string;
}

/** A chat sample with its answer taken apart (set when `tools` or `reasoningParser` was given). */
export interface ChatCompletionOutput extends CompletionOutput {
  content?: string | null;
  reasoningContent?: string | null;
  toolCalls?: ToolCall[];
}

/**
 * A streamed chat chunk with its answer taken apart (set when `tools` or `reasoningParser` was given): the new
 * `reasoningContent` and `content` text, and `toolCalls` fragments shaped as OpenAI's streamed `tool_calls`
 * deltas (a call's index, id and name first, then its arguments in pieces; concatenating a call's `arguments`
 * gives its JSON). `text` stays the raw model text.
 */
export interface ChatStreamDelta extends StreamDelta {
  content?: string;
  reasoningContent?: string;
  toolCalls?: ToolCallDelta[];
}

export interface ChatToolRequest {
  plan: ToolPlan;
  reasoning: ReasoningParser | null;
  params: SamplingParamsInput;
  templateTools: ChatTool[] | undefined;
}

/** Validates the options and applies the constraint; `defaultParser` is asked only when a parser is needed. */
export function prepareChatTools(opts: ChatToolOptions, params: SamplingParamsInput, defaultParser: () => ToolParser): ChatToolRequest {
  const tools = opts.tools === undefined ? undefined : chatToolSchema.array().safeParse(opts.tools);
  if (tools && !tools.success) {
    const issue = tools.error.issues[0]!;
    const param = 'tools' + issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('');
    throw new ValidationError(param, `invalid value for \`${param}\`: ${issue.message}`);
  }
  const choice = opts.toolChoice === undefined ? undefined : toolChoiceSchema.safeParse(opts.toolChoice);
  if (choice && !choice.success) throw new ValidationError('toolChoice', `invalid value for \`toolChoice\`: ${choice.error.issues[0]!.message}`);
  let parser: ToolParser | undefined;
  if (opts.toolCallParser !== undefined) {
    parser = toolParserByName(opts.toolCallParser);
    if (!parser) throw new ValidationError('toolCallParser', `invalid value for \`toolCallParser\`: must be one of ${TOOL_PARSER_NAMES.join(', ')}`);
  }
  let reasoning: ReasoningParser | null = null;
  if (opts.reasoningParser !== undefined) {
    reasoning = reasoningParserByName(opts.reasoningParser) ?? null;
    if (!reasoning) throw new ValidationError('reasoningParser', `invalid value for \`reasoningParser\`: must be one of ${REASONING_PARSER_NAMES.join(', ')}`);
  }
  const wantsAuto = (choice?.data ?? 'auto') === 'auto' && (tools?.data.length ?? 0) > 0;
  const plan = planToolUse(
    { tools: tools?.data, toolChoice: choice?.data, parallelToolCalls: opts.parallelToolCalls },
    { enableAutoToolChoice: true, parser: parser ?? (wantsAuto ? defaultParser() : toolParserByName('hermes')!) },
  );
  return { plan, reasoning, params: enforceToolChoice(params ?? {}, plan), templateTools: tools?.data.length ? tools.data : undefined };
}

/** Adds `content`, `reasoningContent` and `toolCalls` to each sample. */
export function withParsedAnswers(outputs: CompletionOutput[], req: ChatToolRequest): ChatCompletionOutput[] {
  return outputs.map((o) => {
    const answer = parseAnswer(o.text, req.plan, req.reasoning);
    return { ...o, content: answer.content, reasoningContent: answer.reasoningContent, toolCalls: answer.toolCalls };
  });
}

/** Takes each sample's streamed text apart as the server's streamed chat completions do (one `AnswerStream` per sample). */
export async function* withStreamedAnswers(chunks: AsyncIterable<StreamDelta>, req: ChatToolRequest): AsyncGenerator<ChatStreamDelta> {
  const answers = new Map<number, AnswerStream>();
  for await (const d of chunks) {
    let answer = answers.get(d.index);
    if (!answer) {
      answer = new AnswerStream(req.plan, req.reasoning);
      answers.set(d.index, answer);
    }
    const parsed = d.finishReason === null ? answer.push(d.text) : answer.pushLast(d.text);
    yield { ...d, content: parsed.content, reasoningContent: parsed.reasoningContent, toolCalls: parsed.toolCalls };
  }
}
