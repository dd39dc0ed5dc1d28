/**
 * Reasoning parsers for the `<think>...</think>` family: the reasoning goes to `reasoning_content`, the rest to
 * `content` (vLLM's `vllm/reasoning/qwen3_reasoning_parser.py` and `deepseek_r1_reasoning_parser.py`).
 *
 * - `deepseek_r1`: the output starts in reasoning, with or without a leading `<think>` (R1 distills' templates put
 *   `<think>` in the prompt); `</think>` switches to the answer. No `</think>` at all: everything is reasoning.
 * - `qwen3`: reasoning only when the output opens with `<think>` (Qwen3 writes it itself; with
 *   `enable_thinking: false` the template closes an empty think block in the prompt and the output is all answer).
 *
 * The streaming parser holds back text that may be the start of a marker, so a `<think>` split across deltas is
 * never shown as content; its output concatenates to exactly what `split` returns.
 */

import { partialMarkerSuffix } from '../tools/types.js';

const OPEN = '<think>';
const CLOSE = '</think>';

export interface ReasoningSplit {
  reasoning: string | null;
  content: string;
}

export interface ReasoningParser {
  readonly name: string;
  split(text: string): ReasoningSplit;
  stream(): ReasoningStream;
}

type Phase = 'start' | 'reasoning' | 'answer';

/** Feeds text deltas, returns the reasoning and answer parts of each. */
export class ReasoningStream {
  private phase: Phase = 'start';
  private held = '';
  private trimAnswerStart = false;

  constructor(private readonly startsInReasoning: boolean) {}

  /** True once `</think>` passed (or the output turned out to have no reasoning): later text is all answer. */
  get inAnswer(): boolean {
    return this.phase === 'answer';
  }

  push(delta: string): ReasoningSplit {
    let text = this.held + delta;
    this.held = '';
    let reasoning: string | null = null;
    if (this.phase === 'start') {
      const lead = text.trimStart();
      if (lead.length < OPEN.length && OPEN.startsWith(lead)) {
        this.held = text; // may still become `<think>`
        return { reasoning: null, content: '' };
      }
      if (lead.startsWith(OPEN)) {
        text = lead.slice(OPEN.length);
        this.phase = 'reasoning';
      } else this.phase = this.startsInReasoning ? 'reasoning' : 'answer';
    }
    if (this.phase === 'reasoning') {
      const close = text.indexOf(CLOSE);
      if (close < 0) {
        const keep = partialMarkerSuffix(text, CLOSE);
        this.held = text.slice(text.length - keep);
        return { reasoning: text.slice(0, text.length - keep), content: '' };
      }
      reasoning = text.slice(0, close);
      text = text.slice(close + CLOSE.length);
      this.phase = 'answer';
      this.trimAnswerStart = true;
    }
    // The answer usually starts on a new line after </think>; the content does not keep that whitespace.
    if (this.trimAnswerStart) {
      text = text.replace(/^\s+/, '');
      if (text !== '') this.trimAnswerStart = false;
    }
    return { reasoning, content: text };
  }

  /** The held-back tail, once the output ended. */
  finish(): ReasoningSplit {
    const held = this.held;
    this.held = '';
    if (held === '') return { reasoning: null, content: '' };
    if (this.phase === 'reasoning') return { reasoning: held, content: '' };
    if (this.phase === 'start') return this.startsInReasoning ? { reasoning: held, content: '' } : { reasoning: null, content: held };
    return { reasoning: null, content: held };
  }
}

function makeParser(name: string, startsInReasoning: boolean): ReasoningParser {
  return {
    name,
    split(text) {
      const stream = new ReasoningStream(startsInReasoning);
      const a = stream.push(text);
      const b = stream.finish();
      const reasoning = (a.reasoning ?? '') + (b.reasoning ?? '');
      const sawReasoning = a.reasoning !== null || b.reasoning !== null;
      return { reasoning: sawReasoning ? reasoning : null, content: a.content + b.content };
    },
    stream: () => new ReasoningStream(startsInReasoning),
  };
}

export const qwen3ReasoningParser = makeParser('qwen3', false);
export const deepseekR1ReasoningParser = makeParser('deepseek_r1', true);

export const REASONING_PARSERS: Readonly<Record<string, ReasoningParser>> = {
  qwen3: qwen3ReasoningParser,
  deepseek_r1: deepseekR1ReasoningParser,
};

export const REASONING_PARSER_NAMES = Object.keys(REASONING_PARSERS);

export function reasoningParserByName(name: string): ReasoningParser | undefined {
  return Object.hasOwn(REASONING_PARSERS, name) ? REASONING_PARSERS[name] : undefined;
}
