/**
 * `LLM`: the TypeScript API over one engine (vLLM's offline `LLM` class, plus streaming and AbortSignal support).
 * All prompts of a `generate` call are submitted before any output is awaited, so the engine batches them;
 * concurrent calls batch the same way (continuous batching happens in the engine). Aborting a signal aborts the
 * engine request (its KV blocks are freed by the engine's next step) and rejects with an `AbortError`.
 */

import {
  AbortError,
  EngineClosedError,
  ModelNotFoundError,
  PagedLLMError,
  ValidationError,
  native,
  nativeAsync,
} from './errors.js';
import { ensureDefaultModel } from './model-fetch.js';
import {
  type EngineStats,
  type LLMOptions,
  type ModelInfo,
  DEFAULT_MODEL_FILE,
  defaultModelPath,
  parseLLMOptions,
  toEngineConfig,
} from './engine-types.js';
import {
  type NativeEngine,
  type NativeRequestHandle,
  cudaInstallHint,
  hasCuda,
  loadNative,
  wantsCuda,
} from './native.js';
import {
  type EngineDelta,
  type RequestOutput,
  type StreamDelta,
  OutputAccumulator,
  streamDeltas,
} from './outputs.js';
import { MAX_BEAM_WIDTH, type SamplingParamsInput, parseSamplingParams, toEngineParams } from './sampling-params.js';

/** `LLM.beamSearch` parameters (vLLM's `BeamSearchParams`, camelCase). */
export interface BeamSearchParams {
  /** Beams kept at every step; all of them are returned. */
  beamWidth: number;
  /** Default 16; `null` = until the context is full. */
  maxTokens?: number | null;
  /** A finished beam scores `sumLogprobs / generatedLen ** lengthPenalty` (default 1). */
  lengthPenalty?: number;
  /** `true`, `false` (default) or `'never'`, as HF transformers defines them. */
  earlyStopping?: boolean | 'never';
  ignoreEos?: boolean;
  stop?: string | string[];
  stopTokenIds?: number[];
  includeStopStrInOutput?: boolean;
  skipSpecialTokens?: boolean;
}
import {
  type ChatCompletionOutput,
  type ChatStreamDelta,
  type ChatToolOptions,
  prepareChatTools,
  withParsedAnswers,
  withStreamedAnswers,
} from './tools/chat-api.js';
import { detectToolParser } from './tools/detect.js';
import { messagesForTemplate } from './tools/tool-choice.js';

/** A text prompt or a tokenized one. */
export type Prompt = string | number[];

export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

export interface RequestOptions {
  signal?: AbortSignal;
  /** Caller-chosen id (unique among live requests); the engine picks one when absent. */
  requestId?: string;
  /** Lower runs first under the `priority` scheduling policy. */
  priority?: number;
  /** Requests with different salts never share prefix-cache blocks. */
  cacheSalt?: string;
  /**
   * Called once the engine has queued the request (validated, tokenized, its grammar compiled): a server can wait
   * for it to answer a refusal before it starts a response. Not called for a refused request.
   */
  onAdded?: () => void;
  /** Add BOS etc. when tokenizing a text prompt (default true; chat prompts use false). */
  addSpecialTokens?: boolean;
}

export interface ChatOptions extends Omit<RequestOptions, 'addSpecialTokens'>, ChatToolOptions {
  /** A Jinja template to use instead of the model's own. */
  chatTemplate?: string;
  /** End the rendered prompt with the assistant's turn header (default true). */
  addGenerationPrompt?: boolean;
  /** Extra variables for the template. */
  chatTemplateKwargs?: Record<string, unknown>;
}

interface Submitted {
  handle: NativeRequestHandle;
  prompt: string | null;
}

function isTokenPrompt(p: unknown): p is number[] {
  return Array.isArray(p) && p.every((x) => typeof x === 'number');
}

function abortErrorFor(signal: AbortSignal): AbortError {
  return new AbortError('the request was aborted', { cause: signal.reason });
}

function safeAbort(handle: NativeRequestHandle): void {
  try {
    handle.abort();
  } catch {
    // The engine may already be closed; the request is gone either way.
  }
}

/** Waits for the handle's next delta, or rejects with an AbortError (after aborting the request) on `signal`. */
async function nextDelta(handle: NativeRequestHandle, signal: AbortSignal | undefined): Promise<EngineDelta | null> {
  if (!signal) return (await nativeAsync(() => handle.next())) as EngineDelta | null;
  if (signal.aborted) {
    safeAbort(handle);
    throw abortErrorFor(signal);
  }
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => {
      safeAbort(handle);
      reject(abortErrorFor(signal));
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return (await Promise.race([nativeAsync(() => handle.next()), aborted])) as EngineDelta | null;
  } finally {
    signal.removeEventListener('abort', onAbort!);
  }
}

/** Template variables: `chatTemplateKwargs` plus `tools` when given. */
function templateExtra(opts: { tools?: unknown[]; chatTemplateKwargs?: Record<string, unknown> }): string | null {
  if (opts.tools === undefined && opts.chatTemplateKwargs === undefined) return null;
  return JSON.stringify({ ...(opts.tools !== undefined && opts.tools.length > 0 ? { tools: opts.tools } : {}), ...(opts.chatTemplateKwargs ?? {}) });
}

export class LLM {
  private engine: NativeEngine | null;
  /** Facts about the loaded model and the engine's capacity. */
  readonly modelInfo: ModelInfo;

  private constructor(engine: NativeEngine, modelInfo: ModelInfo) {
    this.engine = engine;
    this.modelInfo = modelInfo;
  }

  /**
   * Loads a model (default: SmolLM2-135M-Instruct from the pagedllm cache, downloaded on first use when
   * `npm install` did not fetch it) and starts the engine.
   */
  static async create(options?: LLMOptions): Promise<LLM> {
    const opts = parseLLMOptions(options);
    const binding = loadNative({ device: opts.device });
    if (wantsCuda(opts.device) && !hasCuda(binding)) {
      // Said here rather than by the engine so the message can name the package that has the backend.
      throw new PagedLLMError('backend_error', `CUDA is not available: ${cudaInstallHint()}`);
    }
    if (opts.model === undefined) await ensureDefaultModel();
    const configJson = JSON.stringify(toEngineConfig(opts));
    let engine: NativeEngine;
    try {
      engine = await nativeAsync(() => binding.Engine.create(opts.model ?? '', configJson));
    } catch (err) {
      if (err instanceof ModelNotFoundError && opts.model === undefined) {
        throw new ModelNotFoundError(
          'model_not_found',
          `${err.message} (the default model ${DEFAULT_MODEL_FILE} belongs at ${defaultModelPath()}; ` +
            'run `npx pagedllm fetch-model` to download it)',
          { cause: err },
        );
      }
      throw err;
    }
    return new LLM(engine, native(() => engine.modelInfo()) as ModelInfo);
  }

  private get live(): NativeEngine {
    if (!this.engine) throw new EngineClosedError('engine_closed', 'engine is closed');
    return this.engine;
  }

  /** Token ids must name vocabulary entries; checked here so the error can say which position is wrong. */
  private checkTokens(ids: number[], field: string): void {
    const vocab = this.modelInfo.vocabSize;
    ids.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= vocab) {
        throw new ValidationError(
          field,
          `invalid value for \`${field}\`: token id ${id} at position ${i} is outside the vocabulary (size ${vocab})`,
        );
      }
    });
  }

  private async submit(prompt: Prompt, engineParams: Record<string, unknown>, opts: RequestOptions): Promise<Submitted> {
    const engine = this.live;
    if (isTokenPrompt(prompt)) {
      if (prompt.length === 0) throw new ValidationError('prompt', 'invalid value for `prompt`: must not be empty');
      this.checkTokens(prompt, 'prompt');
    } else if (typeof prompt !== 'string') {
      throw new ValidationError('prompt', 'invalid value for `prompt`: must be a string or an array of token ids');
    }
    const input: Record<string, unknown> = { prompt, params: engineParams };
    if (opts.requestId !== undefined) input.request_id = opts.requestId;
    if (opts.priority !== undefined) input.priority = opts.priority;
    if (opts.cacheSalt !== undefined) input.cache_salt = opts.cacheSalt;
    if (opts.addSpecialTokens !== undefined) input.add_special_tokens = opts.addSpecialTokens;
    const json = JSON.stringify(input);
    // A constrained request may compile a grammar the cache has not seen (a large JSON Schema can take a while):
    // that runs on a blocking thread, so other requests' streams keep flowing. Others stay synchronous (cheaper).
    const handle =
      engineParams.structured_outputs !== undefined
        ? await nativeAsync(() => engine.addRequestAsync(json))
        : native(() => engine.addRequest(json));
    opts.onAdded?.();
    return { handle, prompt: typeof prompt === 'string' ? prompt : null };
  }

  /** Reads a request to its end and returns the accumulated output. */
  private async collect(sub: Submitted, signal: AbortSignal | undefined): Promise<RequestOutput> {
    const acc = new OutputAccumulator(sub.handle.requestId, sub.prompt);
    while (!acc.finished) {
      const delta = await nextDelta(sub.handle, signal);
      if (delta === null) {
        throw new EngineClosedError('engine_closed', `request ${sub.handle.requestId} ended before it finished`);
      }
      acc.add(delta);
    }
    return acc.result();
  }

  /**
   * Generates completions for one prompt or many (text or token ids). All prompts are submitted together so the
   * engine batches them; the outputs come back in prompt order.
   */
  async generate(
    prompts: Prompt | Prompt[],
    params?: SamplingParamsInput,
    opts: RequestOptions = {},
  ): Promise<RequestOutput[]> {
    const engineParams = toEngineParams(parseSamplingParams(params));
    const list: Prompt[] = typeof prompts === 'string' || isTokenPrompt(prompts) ? [prompts] : prompts;
    if (opts.requestId !== undefined && list.length > 1) {
      throw new ValidationError('requestId', 'invalid value for `requestId`: only one prompt may take an explicit id');
    }
    if (opts.signal?.aborted) throw abortErrorFor(opts.signal);
    const subs: Submitted[] = [];
    try {
      for (const p of list) subs.push(await this.submit(p, engineParams, opts));
      return await Promise.all(subs.map((s) => this.collect(s, opts.signal)));
    } catch (err) {
      // One failed prompt fails the call: free what the others hold.
      for (const s of subs) safeAbort(s.handle);
      throw err;
    }
  }

  /**
   * Beam search (vLLM's `LLM.beam_search`): for each prompt, `beamWidth` beams on shared KV blocks, deterministic
   * (HF transformers' `num_beams` search on the model's raw log-probs). Each `RequestOutput` holds all
   * `beamWidth` finished beams, best first, with their cumulative log-probs; prompts batch together and with any
   * other requests of the engine.
   */
  async beamSearch(prompts: Prompt | Prompt[], params: BeamSearchParams, opts: RequestOptions = {}): Promise<RequestOutput[]> {
    const { beamWidth, ...rest } = params ?? ({} as BeamSearchParams);
    if (!Number.isInteger(beamWidth) || beamWidth < 1 || beamWidth > MAX_BEAM_WIDTH) {
      throw new ValidationError('beamWidth', `invalid value for \`beamWidth\`: must be an integer in [1, ${MAX_BEAM_WIDTH}], got ${String(beamWidth)}`);
    }
    return this.generate(prompts, { ...rest, n: beamWidth, useBeamSearch: true }, opts);
  }

  /**
   * Streams one prompt's output as it is generated. Each chunk is the new text of one sample (`index` of `n`).
   * Breaking out of the loop aborts the request.
   */
  async *stream(prompt: Prompt, params?: SamplingParamsInput, opts: RequestOptions = {}): AsyncGenerator<StreamDelta> {
    const engineParams = toEngineParams(parseSamplingParams(params));
    if (opts.signal?.aborted) throw abortErrorFor(opts.signal);
    const sub = await this.submit(prompt, engineParams, opts);
    let finished = false;
    try {
      while (!finished) {
        const delta = await nextDelta(sub.handle, opts.signal);
        if (delta === null) {
          throw new EngineClosedError('engine_closed', `request ${sub.handle.requestId} ended before it finished`);
        }
        finished = delta.finished;
        yield* streamDeltas(delta);
      }
    } finally {
      if (!finished) safeAbort(sub.handle);
    }
  }

  /**
   * Renders chat messages into a prompt with the model's chat template (or `opts.chatTemplate`). `opts.tools`
   * becomes the template's `tools`; assistant `tool_calls` arguments are handed to the template parsed, as HF
   * templates expect.
   */
  applyChatTemplate(messages: ChatMessage[], opts: Omit<ChatOptions, keyof RequestOptions> = {}): string {
    const engine = this.live;
    const extra = templateExtra(opts);
    return native(() =>
      engine.applyChatTemplate(JSON.stringify(messagesForTemplate(messages)), opts.addGenerationPrompt ?? true, opts.chatTemplate ?? null, extra),
    );
  }

  /**
   * `applyChatTemplate` off the event loop: the template is compiled and rendered on a blocking thread, so a large
   * or slow render never delays other requests' streams. Same limits (fuel, output size) and errors.
   */
  async applyChatTemplateAsync(messages: ChatMessage[], opts: Omit<ChatOptions, keyof RequestOptions> = {}): Promise<string> {
    const engine = this.live;
    const extra = templateExtra(opts);
    return nativeAsync(() =>
      engine.applyChatTemplateAsync(JSON.stringify(messagesForTemplate(messages)), opts.addGenerationPrompt ?? true, opts.chatTemplate ?? null, extra),
    );
  }

  /**
   * Applies the chat template to `messages` and generates the assistant's reply. With `opts.tools` (or
   * `opts.reasoningParser`) each output also carries `content`, `toolCalls` and `reasoningContent`;
   * `toolChoice: "required"` or a named function constrains the output so that the call's arguments follow the
   * function's `parameters` schema.
   */
  async chat(messages: ChatMessage[], params?: SamplingParamsInput, opts: ChatOptions = {}): Promise<RequestOutput & { outputs: ChatCompletionOutput[] }> {
    if (opts.tools === undefined && opts.toolChoice === undefined && opts.reasoningParser === undefined) {
      const prompt = this.applyChatTemplate(messages, opts);
      // The template already wrote the special tokens it wants.
      const [out] = await this.generate(prompt, params, { ...opts, addSpecialTokens: false });
      return out!;
    }
    const tooling = prepareChatTools(opts, params ?? {}, () =>
      detectToolParser((probe, extra) => this.applyChatTemplate(probe as ChatMessage[], { chatTemplate: opts.chatTemplate, chatTemplateKwargs: extra })),
    );
    const prompt = this.applyChatTemplate(messages, { ...opts, tools: tooling.templateTools });
    const [out] = await this.generate(prompt, tooling.params, { ...opts, addSpecialTokens: false });
    return { ...out!, outputs: withParsedAnswers(out!.outputs, tooling) };
  }

  /**
   * Streams the assistant's reply to `messages`. With `tools` (or `toolChoice` / `reasoningParser`), each chunk
   * also carries its answer taken apart as the server streams it: `content`, `reasoningContent` and `toolCalls`
   * fragments (OpenAI's streamed `tool_calls` deltas), with `toolChoice` enforced by grammar as in `chat`.
   */
  chatStream(messages: ChatMessage[], params?: SamplingParamsInput, opts: ChatOptions = {}): AsyncGenerator<ChatStreamDelta> {
    if (opts.tools === undefined && opts.toolChoice === undefined && opts.reasoningParser === undefined) {
      const prompt = this.applyChatTemplate(messages, opts);
      return this.stream(prompt, params, { ...opts, addSpecialTokens: false });
    }
    const tooling = prepareChatTools(opts, params ?? {}, () =>
      detectToolParser((probe, extra) => this.applyChatTemplate(probe as ChatMessage[], { chatTemplate: opts.chatTemplate, chatTemplateKwargs: extra })),
    );
    const prompt = this.applyChatTemplate(messages, { ...opts, tools: tooling.templateTools });
    return withStreamedAnswers(this.stream(prompt, tooling.params, { ...opts, addSpecialTokens: false }), tooling);
  }

  tokenize(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    const engine = this.live;
    return native(() => engine.encode(text, opts.addSpecialTokens ?? true));
  }

  /** `tokenize` on a blocking thread (for large inputs: the event loop stays free). */
  async tokenizeAsync(text: string, opts: { addSpecialTokens?: boolean } = {}): Promise<number[]> {
    const engine = this.live;
    return nativeAsync(() => engine.encodeAsync(text, opts.addSpecialTokens ?? true));
  }

  detokenize(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    const engine = this.live;
    this.checkTokens(ids, 'ids');
    return native(() => engine.decode(ids, opts.skipSpecialTokens ?? true));
  }

  /** Aborts a live request by id; false when none is live. */
  abort(requestId: string): boolean {
    const engine = this.live;
    return native(() => engine.abort(requestId));
  }

  stats(): EngineStats {
    const engine = this.live;
    return native(() => engine.stats()) as EngineStats;
  }

  /** False after `close()` or when the engine thread died. */
  get isAlive(): boolean {
    return this.engine !== null && this.engine.isAlive();
  }

  /** Aborts in-flight requests and stops the engine. Idempotent; afterwards every call throws `engine_closed`. */
  close(): void {
    const engine = this.engine;
    this.engine = null;
    if (engine) native(() => engine.close());
  }
}
