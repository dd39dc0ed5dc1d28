/**
 * The engine's configuration (`LLMOptions`, validated with zod and sent as `EngineConfig` snake_case JSON) and the
 * shapes of what it reports (`ModelInfo`, `EngineStats`, camelCase as serialized by `crates/engine/src/engine/
 * stats.rs`).
 */

import os from 'node:os';
import path from 'node:path';

import { z } from 'zod';

import { validationErrorFrom } from './sampling-params.js';

const positiveInt = z.number().int('must be an integer').min(1, 'must be at least 1');

export const llmOptionsSchema = z
  .object({
    /** A GGUF file, a safetensors model directory, or omitted for the default model. */
    model: z.string().min(1, 'must not be empty'),
    /** Tokens per KV block. */
    blockSize: positiveInt,
    /** Bytes of KV cache to allocate (sets the number of blocks). */
    kvCacheBytes: positiveInt,
    /** Explicit KV block count; overrides `kvCacheBytes`. */
    numGpuBlocksOverride: positiveInt,
    /** Most sequences in one engine step. */
    maxNumSeqs: positiveInt,
    /** Most tokens (prefill chunks + decodes) in one engine step. */
    maxNumBatchedTokens: positiveInt,
    /** Context cap; defaults to the model's own. */
    maxModelLen: positiveInt,
    enablePrefixCaching: z.boolean(),
    /**
     * The prefix cache's block hash (vLLM's `--prefix-caching-hash-algo`): `sha256` (default; collision-resistant,
     * so a crafted prompt cannot be served another prompt's KV) or `xxhash` (xxh3-128; faster, for trusted clients).
     */
    prefixCachingHashAlgo: z.enum(['sha256', 'xxhash']),
    schedulingPolicy: z.enum(['fcfs', 'priority']),
    /** CPU compute threads; defaults to the physical cores. */
    numThreads: positiveInt,
    /**
     * CPU matmuls with Q4_0 / Q4_1 / Q8_0 weights: `fast` (default; activations quantized to int8 per 32, integer
     * dot products and an f16 KV cache, as llama.cpp) or `exact` (f32 activations and KV cache, what the HF-parity
     * tests use).
     */
    cpuPrecision: z.enum(['fast', 'exact']),
    /** Default seed for requests that set none. */
    seed: z.number().int('must be an integer').min(0, 'must be >= 0'),
    /** Where the model runs: `cpu` (default), `cuda` or `cuda:N` (needs a build with the CUDA backend). */
    device: z.string().regex(/^(cpu|cuda|gpu|cuda:\d+)$/i, 'must be cpu, cuda or cuda:N'),
    /** GPU: share of the GPU's memory for weights, activations and KV cache (vLLM's flag; default 0.9). */
    gpuMemoryUtilization: z.number().gt(0, 'must be > 0').max(1, 'must be <= 1'),
    /** GPU: run every step eagerly, without CUDA graphs. */
    enforceEager: z.boolean(),
    /**
     * GPU: weights, activations and KV cache type (vLLM's `--dtype`): `auto` (the checkpoint's), `bfloat16`,
     * `float16`/`half`, or `float32`/`float` (the reference type: exact f32, twice the memory, slower).
     */
    dtype: z.enum(['auto', 'bfloat16', 'float16', 'half', 'float32', 'float']),
    /**
     * Do not load the model's tokenizer (vLLM's `--skip-tokenizer-init`): prompts must be token ids, outputs carry
     * token ids and empty text; stop strings, chat and structured outputs are refused with a clear error.
     */
    skipTokenizerInit: z.boolean(),
  })
  .partial()
  .strict();

export type LLMOptions = z.input<typeof llmOptionsSchema>;

export function parseLLMOptions(input: LLMOptions | undefined): z.output<typeof llmOptionsSchema> {
  const result = llmOptionsSchema.safeParse(input ?? {});
  if (!result.success) throw validationErrorFrom(result.error, input);
  return result.data;
}

/** `EngineConfig` JSON (snake_case) with only the options that were set. */
export function toEngineConfig(o: z.output<typeof llmOptionsSchema>): Record<string, unknown> {
  const map: [keyof typeof o, string][] = [
    ['blockSize', 'block_size'],
    ['kvCacheBytes', 'kv_cache_bytes'],
    ['numGpuBlocksOverride', 'num_gpu_blocks_override'],
    ['maxNumSeqs', 'max_num_seqs'],
    ['maxNumBatchedTokens', 'max_num_batched_tokens'],
    ['maxModelLen', 'max_model_len'],
    ['enablePrefixCaching', 'enable_prefix_caching'],
    ['prefixCachingHashAlgo', 'prefix_caching_hash_algo'],
    ['schedulingPolicy', 'scheduling_policy'],
    ['numThreads', 'num_threads'],
    ['cpuPrecision', 'cpu_precision'],
    ['seed', 'seed'],
    ['device', 'device'],
    ['gpuMemoryUtilization', 'gpu_memory_utilization'],
    ['enforceEager', 'enforce_eager'],
    ['dtype', 'dtype'],
    ['skipTokenizerInit', 'skip_tokenizer_init'],
  ];
  const out: Record<string, unknown> = {};
  for (const [from, to] of map) if (o[from] !== undefined) out[to] = o[from];
  return out;
}

/** The default model's file name (fetched by `pagedllm fetch-model`). */
export const DEFAULT_MODEL_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';

/** `$PAGEDLLM_CACHE_DIR`, else `$XDG_CACHE_HOME/pagedllm`, else `~/.cache/pagedllm` (the Rust loader's rule). */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.PAGEDLLM_CACHE_DIR) return env.PAGEDLLM_CACHE_DIR;
  if (env.XDG_CACHE_HOME) return path.join(env.XDG_CACHE_HOME, 'pagedllm');
  return path.join(os.homedir(), '.cache', 'pagedllm');
}

export function defaultModelPath(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(cacheDir(env), 'models', DEFAULT_MODEL_FILE);
}

export interface ModelInfo {
  name: string;
  path: string;
  format: string;
  architecture: string;
  maxModelLen: number;
  vocabSize: number;
  blockSize: number;
  numKvBlocks: number;
  /** How many max-length requests fit in the KV cache at once. */
  maxConcurrency: number;
  hasTokenizer: boolean;
  hasChatTemplate: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
  numThreads: number;
  device: string;
  /** The CPU kernel family detected at start-up: `avx512-vnni`, `avx-vnni`, `avx2`, `neon-dotprod` or `scalar`. */
  cpuIsa: string;
  /** The CPU matmuls' numeric mode: `fast` or `exact`. */
  cpuPrecision: 'fast' | 'exact';
  /**
   * Wall seconds of each start-up phase, in order: `load_model` (reading and parsing the files), `tokenizer`, then
   * on CUDA `device_init`, `weights_upload`, `profile_step`, `kv_cache_alloc`, `graph_capture`, on the CPU
   * `backend_init`, `weights_prepare`.
   */
  startupPhases: { name: string; seconds: number }[];
  /** Seconds from the start of loading to a ready engine. */
  startupS: number;
}

export interface EngineStats {
  numRunning: number;
  numWaiting: number;
  kvBlocksTotal: number;
  kvBlocksInUse: number;
  /** Most KV blocks held at once so far (after each step's scheduling). */
  maxKvBlocksInUse: number;
  kvBlocksCached: number;
  /** KV slots in the running requests' blocks after the last step, and those holding no token (the waste). */
  kvSlotsHeld: number;
  kvSlotsUnused: number;
  /** The same summed over all steps (time-weighted waste = ratio of their increments). */
  kvSlotStepsHeld: number;
  kvSlotStepsUnused: number;
  kvCacheUsage: number;
  prefixCacheQueries: number;
  prefixCacheHits: number;
  promptTokensTotal: number;
  generationTokensTotal: number;
  numPreemptions: number;
  requestsFinishedTotal: number;
  steps: number;
  /** Most sequences in any one step so far. */
  maxBatchSeqs: number;
  maxBatchTokens: number;
  /** Engine-thread seconds per phase of a step, summed over steps. */
  stepPhaseSeconds: StepPhaseSeconds;
}

export interface StepPhaseSeconds {
  schedule: number;
  prepare: number;
  /** Batch built, uploaded and launched (on the CPU backend, including the forward pass). */
  launch: number;
  /** Grammar masks written into the GPU's sampling batch while the forward runs (waiting for one shows here). */
  masks: number;
  /** Waiting for the device's forward, sampling and copy back. */
  wait: number;
  hostSampling: number;
  update: number;
  outputs: number;
}
