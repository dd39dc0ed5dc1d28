/**
 * Output types, shaped like vLLM's `RequestOutput` / `CompletionOutput` (camelCase), and the accumulator that
 * folds the engine's per-step deltas into them. The engine sends, per request, a stream of `EngineDelta`s: the
 * first carries the prompt token ids (and prompt log-probs when asked for), each carries new text/tokens per
 * sample index, the last has `finished: true` and the metrics.
 */

export interface TopLogprob {
  tokenId: number;
  /** The token's text, or `bytes:\\xNN...` when it is only part of a UTF-8 character. */
  token: string;
  /** The raw bytes the token stands for (join them across tokens to rebuild split characters). */
  bytes: number[];
  logprob: number;
}

/** Log-probs at one position: the chosen token, its 1-based rank, and the top-N alternatives. */
export interface PositionLogprobs {
  tokenId: number;
  token: string;
  bytes: number[];
  logprob: number;
  rank: number;
  top: TopLogprob[];
}

export type FinishReason = 'stop' | 'length' | 'abort';

export interface RequestMetrics {
  /** Seconds since the UNIX epoch. */
  arrivalTime: number;
  firstScheduledTime: number | null;
  firstTokenTime: number | null;
  finishedTime: number | null;
  numPromptTokens: number;
  numGenerationTokens: number;
  /** Prompt tokens served from the prefix cache. */
  numCachedTokens: number;
}

export interface CompletionOutput {
  index: number;
  text: string;
  tokenIds: number[];
  cumulativeLogprob: number | null;
  /** One entry per generated token when `logprobs` was requested, else null. */
  logprobs: PositionLogprobs[] | null;
  finishReason: FinishReason | null;
  /** The stop string or stop token id that ended the sample; null for EOS or length. */
  stopReason: string | number | null;
}

export interface RequestOutput {
  requestId: string;
  /** The prompt text, when the prompt was given as text. */
  prompt: string | null;
  promptTokenIds: number[];
  /** Per prompt position when `promptLogprobs` was requested (null for the first position), else null. */
  promptLogprobs: (PositionLogprobs | null)[] | null;
  outputs: CompletionOutput[];
  finished: boolean;
  metrics: RequestMetrics | null;
}

/** One engine delta as the binding delivers it (`crates/engine/src/engine/output.rs`). */
export interface EngineDelta {
  requestId: string;
  promptTokenIds: number[] | null;
  promptLogprobs: (PositionLogprobs | null)[] | null;
  outputs: {
    index: number;
    text: string;
    tokenIds: number[];
    logprobs: PositionLogprobs[] | null;
    cumulativeLogprob: number;
    finishReason: string | null;
    stopReason: string | number | null;
  }[];
  finished: boolean;
  metrics: RequestMetrics | null;
}

/** What `LLM.stream` yields: the new output of one sample since the previous chunk. */
export interface StreamDelta {
  requestId: string;
  /** Which of the `n` samples this belongs to. */
  index: number;
  text: string;
  tokenIds: number[];
  logprobs: PositionLogprobs[] | null;
  cumulativeLogprob: number | null;
  finishReason: FinishReason | null;
  stopReason: string | number | null;
  /** True on the request's last chunk (all samples done). */
  finished: boolean;
  /** On the request's first chunk: the prompt's token ids (and its log-probs when `promptLogprobs` was asked for). */
  promptTokenIds?: number[];
  promptLogprobs?: (PositionLogprobs | null)[];
  /** On the request's last chunk: the engine's timing and token counts. */
  metrics?: RequestMetrics;
}

function finishReasonOf(raw: string | null): FinishReason | null {
  return raw === 'stop' || raw === 'length' || raw === 'abort' ? raw : null;
}

/** The stream chunks of one engine delta (samples with nothing new are skipped unless the request finished). */
export function streamDeltas(delta: EngineDelta): StreamDelta[] {
  const chunks: StreamDelta[] = delta.outputs
    .filter((o) => o.text.length > 0 || o.tokenIds.length > 0 || o.finishReason !== null)
    .map((o) => ({
      requestId: delta.requestId,
      index: o.index,
      text: o.text,
      tokenIds: o.tokenIds,
      logprobs: o.logprobs,
      cumulativeLogprob: o.cumulativeLogprob,
      finishReason: finishReasonOf(o.finishReason),
      stopReason: o.stopReason ?? null,
      finished: false,
    }));
  const first = chunks[0];
  if (first && delta.promptTokenIds) first.promptTokenIds = delta.promptTokenIds;
  if (first && delta.promptLogprobs) first.promptLogprobs = delta.promptLogprobs;
  if (delta.finished) {
    const last = chunks.at(-1);
    if (last) {
      last.finished = true;
      if (delta.metrics) last.metrics = delta.metrics;
    }
  }
  return chunks;
}

/** Folds deltas into one `RequestOutput` (text and tokens concatenated per sample index). */
export class OutputAccumulator {
  private readonly out: RequestOutput;
  private readonly byIndex = new Map<number, CompletionOutput>();

  constructor(requestId: string, prompt: string | null) {
    this.out = {
      requestId,
      prompt,
      promptTokenIds: [],
      promptLogprobs: null,
      outputs: [],
      finished: false,
      metrics: null,
    };
  }

  add(delta: EngineDelta): void {
    if (delta.promptTokenIds) this.out.promptTokenIds = delta.promptTokenIds;
    if (delta.promptLogprobs) this.out.promptLogprobs = delta.promptLogprobs;
    for (const d of delta.outputs) {
      let c = this.byIndex.get(d.index);
      if (!c) {
        c = {
          index: d.index,
          text: '',
          tokenIds: [],
          cumulativeLogprob: null,
          logprobs: null,
          finishReason: null,
          stopReason: null,
        };
        this.byIndex.set(d.index, c);
      }
      c.text += d.text;
      c.tokenIds.push(...d.tokenIds);
      if (d.logprobs) (c.logprobs ??= []).push(...d.logprobs);
      c.cumulativeLogprob = d.cumulativeLogprob;
      if (d.finishReason !== null) c.finishReason = finishReasonOf(d.finishReason);
      if (d.stopReason !== null && d.stopReason !== undefined) c.stopReason = d.stopReason;
    }
    if (delta.metrics) this.out.metrics = delta.metrics;
    if (delta.finished) this.out.finished = true;
  }

  get finished(): boolean {
    return this.out.finished;
  }

  /** The output so far, samples in index order. */
  result(): RequestOutput {
    return { ...this.out, outputs: [...this.byIndex.values()].sort((a, b) => a.index - b.index) };
  }
}
