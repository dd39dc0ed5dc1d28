/** pagedllm: a vLLM-class LLM inference engine for Node.js. */

export { LLM, type ChatMessage, type ChatOptions, type Prompt, type RequestOptions } from './llm.js';
export {
  AbortError,
  ContextLengthError,
  EngineClosedError,
  ModelLoadError,
  ModelNotFoundError,
  PagedLLMError,
  ValidationError,
  type ErrorCode,
} from './errors.js';
export {
  MAX_LOGPROBS,
  parseSamplingParams,
  samplingParamsSchema,
  structuredOutputsSchema,
  toEngineParams,
  type SamplingParams,
  type StructuredOutputs,
  type SamplingParamsInput,
} from './sampling-params.js';
export type {
  CompletionOutput,
  FinishReason,
  PositionLogprobs,
  RequestMetrics,
  RequestOutput,
  StreamDelta,
  TopLogprob,
} from './outputs.js';
export {
  cacheDir,
  defaultModelPath,
  DEFAULT_MODEL_FILE,
  type EngineStats,
  type LLMOptions,
  type ModelInfo,
  type StepPhaseSeconds,
} from './engine-types.js';
export type { ChatCompletionOutput, ChatStreamDelta, ChatToolOptions } from './tools/chat-api.js';
export type { ChatTool, ToolChoice } from './tools/tool-choice.js';
export type { ToolCall, ToolCallDelta } from './tools/types.js';
