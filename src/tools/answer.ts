/**
 * A chat answer taken apart: reasoning (when a reasoning parser is configured), content, and tool calls, per the
 * request's `ToolPlan`. Tool parsing and constraints apply to the answer part only (after `</think>`), as in vLLM.
 *
 * - none: the answer is content.
 * - auto: the configured parser finds calls in the answer (`parallel_tool_calls: false` keeps the first).
 * - named: the (constrained) answer is the arguments JSON of the one named function.
 * - required: the (constrained) answer is a JSON array of `{"name", "parameters"}` objects.
 *
 * `parseAnswer` is the non-streamed form; `AnswerStream` the streamed one, built from the same scanners.
 */

import type { ReasoningParser, ReasoningStream } from '../reasoning/think-parser.js';
import { type OutputScan, RescanStream, extractWith, scanCallObjects } from './call-scan.js';
import type { ToolPlan } from './tool-choice.js';
import { EMPTY_OUTPUT, type StreamedToolOutput, type ToolCall, type ToolCallDelta, type ToolCallStream, newToolCallId } from './types.js';

export interface ParsedAnswer {
  reasoningContent: string | null;
  content: string | null;
  toolCalls: ToolCall[];
}

export interface AnswerDelta {
  reasoningContent: string;
  content: string;
  toolCalls: ToolCallDelta[];
}

/** The `required` output: a JSON array of `{"name": ..., "parameters": {...}}`. */
export function scanRequiredArray(text: string, final: boolean): OutputScan {
  const scanned = scanCallObjects(text, '[],');
  return { content: '', calls: scanned.calls, invalid: scanned.invalid || (final && !scanned.complete) };
}

/** The named-function output: the whole answer is the arguments. */
class NamedCallStream implements ToolCallStream {
  private started = false;
  constructor(private readonly name: string) {}

  get callCount(): number {
    return this.started ? 1 : 0;
  }

  push(text: string): StreamedToolOutput {
    if (this.started) return text === '' ? EMPTY_OUTPUT : { content: '', toolCalls: [{ index: 0, function: { arguments: text } }] };
    if (text.trim() === '') return EMPTY_OUTPUT;
    this.started = true;
    return { content: '', toolCalls: [{ index: 0, id: newToolCallId(), type: 'function', function: { name: this.name, arguments: text.trimStart() } }] };
  }

  finish(): StreamedToolOutput {
    return EMPTY_OUTPUT;
  }
}

/** Passes the answer through as content. */
class ContentStream implements ToolCallStream {
  readonly callCount = 0;
  push(text: string): StreamedToolOutput {
    return { content: text, toolCalls: [] };
  }
  finish(): StreamedToolOutput {
    return EMPTY_OUTPUT;
  }
}

/** Drops calls after the first (`parallel_tool_calls: false`). */
function firstCallOnly(out: StreamedToolOutput): StreamedToolOutput {
  return { content: out.content, toolCalls: out.toolCalls.filter((d) => d.index === 0) };
}

function toolStream(plan: ToolPlan): ToolCallStream {
  switch (plan.mode) {
    case 'none':
      return new ContentStream();
    case 'auto':
      return plan.parser.stream();
    case 'named':
      return new NamedCallStream(plan.tool.function.name);
    case 'required':
      return new RescanStream(scanRequiredArray);
  }
}

function extractCalls(plan: ToolPlan, answer: string): { content: string | null; toolCalls: ToolCall[] } {
  switch (plan.mode) {
    case 'none':
      return { content: answer, toolCalls: [] };
    case 'auto': {
      const found = plan.parser.extract(answer);
      return plan.parallel ? found : { content: found.content, toolCalls: found.toolCalls.slice(0, 1) };
    }
    case 'named':
      return { content: null, toolCalls: [{ id: newToolCallId(), type: 'function', function: { name: plan.tool.function.name, arguments: answer.trim() } }] };
    case 'required': {
      const found = extractWith(scanRequiredArray, answer);
      // The constraint makes this an array of calls; an output cut short (max_tokens) stays visible as content.
      return plan.parallel ? found : { content: found.content, toolCalls: found.toolCalls.slice(0, 1) };
    }
  }
}

export function parseAnswer(text: string, plan: ToolPlan, reasoning: ReasoningParser | null): ParsedAnswer {
  let reasoningContent: string | null = null;
  let answer = text;
  if (reasoning) {
    const split = reasoning.split(text);
    reasoningContent = split.reasoning;
    answer = split.content;
  }
  const { content, toolCalls } = extractCalls(plan, answer);
  return { reasoningContent, content, toolCalls };
}

/** One choice's streamed answer: text deltas in, reasoning / content / tool-call deltas out. */
export class AnswerStream {
  private readonly reasoning: ReasoningStream | null;
  private readonly tools: ToolCallStream;
  private readonly parallel: boolean;

  constructor(plan: ToolPlan, reasoning: ReasoningParser | null) {
    this.reasoning = reasoning?.stream() ?? null;
    this.tools = toolStream(plan);
    this.parallel = plan.mode === 'none' || plan.mode === 'named' || plan.parallel;
  }

  /** Calls sent so far (`finish_reason` becomes "tool_calls" when > 0). */
  get callCount(): number {
    return this.parallel ? this.tools.callCount : Math.min(1, this.tools.callCount);
  }

  push(text: string): AnswerDelta {
    if (!this.reasoning) return this.withTools('', this.tools.push(text));
    const split = this.reasoning.push(text);
    return this.withTools(split.reasoning ?? '', split.content === '' ? EMPTY_OUTPUT : this.tools.push(split.content));
  }

  /** The last text of the output: `push(text)` and `finish()` in one delta. */
  pushLast(text: string): AnswerDelta {
    const a = this.push(text);
    const b = this.finish();
    return { reasoningContent: a.reasoningContent + b.reasoningContent, content: a.content + b.content, toolCalls: [...a.toolCalls, ...b.toolCalls] };
  }

  finish(): AnswerDelta {
    let reasoningContent = '';
    let tail = EMPTY_OUTPUT;
    if (this.reasoning) {
      const split = this.reasoning.finish();
      reasoningContent = split.reasoning ?? '';
      if (split.content !== '') tail = this.tools.push(split.content);
    }
    const last = this.tools.finish();
    return this.withTools(reasoningContent, { content: tail.content + last.content, toolCalls: [...tail.toolCalls, ...last.toolCalls] });
  }

  private withTools(reasoningContent: string, out: StreamedToolOutput): AnswerDelta {
    const calls = this.parallel ? out : firstCallOnly(out);
    return { reasoningContent, content: calls.content, toolCalls: calls.toolCalls };
  }
}
