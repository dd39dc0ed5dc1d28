/**
 * Server options: what `createApp` and `startServer` take (`ServerOptionsInput`, every field optional), the
 * defaults that fill them in (`resolveServerOptions`), and the `pagedllm serve` flags (vLLM's names, kebab-case)
 * that produce them (`parseServeArgs`). Bad flag values are `UsageError`s, reported before the model loads.
 */

import fs from 'node:fs';
import { parseArgs } from 'node:util';

import { UsageError, cpuPrecisionFlag, intFlag } from '../cli/args.js';
import { DEFAULT_MODEL_FILE, type LLMOptions } from '../engine-types.js';
import { REASONING_PARSER_NAMES } from '../reasoning/think-parser.js';
import { TOOL_PARSER_NAMES } from '../tools/registry.js';
import { DEFAULT_MAX_REQUEST_PROMPT_TOKENS, DEFAULT_MAX_WAITING } from './limits.js';

export const DEFAULT_HOST = '127.0.0.1';
export const DEFAULT_PORT = 8000;
export const DEFAULT_BODY_LIMIT_BYTES = 1 << 20;
export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 10_000;

export interface ServerOptions {
  host: string;
  port: number;
  /** Bearer key required on /v1/*, /tokenize and /detokenize; null = open. */
  apiKey: string | null;
  /** Names clients may send as `model`; the first is the one reported. Empty = the model's own name. */
  servedModelName: string[];
  /** Most requests that may wait for their first token; one more is answered 503. null = unbounded. */
  maxWaiting: number | null;
  /** Most prompt tokens in one request (summed over its prompts); more is a 400. */
  maxRequestPromptTokens: number;
  /** Render `chat_template` sent in a request (vLLM's `--trust-request-chat-template`); refused (400) when false. */
  trustRequestChatTemplate: boolean;
  /** Seconds suggested in `Retry-After` when shedding load. */
  retryAfterSeconds: number;
  /** Largest accepted request body (413 above it). */
  bodyLimitBytes: number;
  /** A Jinja chat template (the text, already read from its file) replacing the model's own; null = the model's. */
  chatTemplate: string | null;
  /** No per-request log lines. */
  disableLogRequests: boolean;
  /** vLLM's `--enable-auto-tool-choice`: `tool_choice: "auto"` parses calls out of answers (400 when false). */
  enableAutoToolChoice: boolean;
  /** `--tool-call-parser` name (`TOOL_PARSER_NAMES`); null = the one the chat template implies (else hermes). */
  toolCallParser: string | null;
  /** `--reasoning-parser` name (`REASONING_PARSER_NAMES`); null = answers carry no `reasoning_content`. */
  reasoningParser: string | null;
  /** How long in-flight requests may run after SIGTERM/SIGINT before they are aborted. */
  shutdownTimeoutMs: number;
  /** Where log lines go. */
  log: (line: string) => void;
  /** Engine options for `LLM.create` (used by `startServer`; `createApp` takes a ready LLM). */
  engine: LLMOptions;
}

export type ServerOptionsInput = Partial<ServerOptions>;

export function resolveServerOptions(input: ServerOptionsInput = {}): ServerOptions {
  const defined = Object.fromEntries(Object.entries(input).filter(([, v]) => v !== undefined)) as ServerOptionsInput;
  return {
    host: DEFAULT_HOST,
    port: DEFAULT_PORT,
    apiKey: null,
    servedModelName: [],
    maxWaiting: DEFAULT_MAX_WAITING,
    maxRequestPromptTokens: DEFAULT_MAX_REQUEST_PROMPT_TOKENS,
    trustRequestChatTemplate: false,
    retryAfterSeconds: 1,
    bodyLimitBytes: DEFAULT_BODY_LIMIT_BYTES,
    chatTemplate: null,
    disableLogRequests: false,
    enableAutoToolChoice: false,
    toolCallParser: null,
    reasoningParser: null,
    shutdownTimeoutMs: DEFAULT_SHUTDOWN_TIMEOUT_MS,
    log: (line) => process.stdout.write(line + '\n'),
    engine: {},
    ...defined,
  };
}

export const SERVE_USAGE = `usage: pagedllm serve [options]

Serves the model over an OpenAI-compatible HTTP API (vLLM's endpoints, errors and metrics).

model and engine:
  --model PATH                    GGUF file or safetensors directory (default: ${DEFAULT_MODEL_FILE})
  --served-model-name NAME...     name(s) clients send as \`model\` (the first is reported; default: the model's)
  --max-model-len N               cap the context length
  --max-num-seqs N                most sequences in one engine step
  --max-num-batched-tokens N      most tokens in one engine step
  --block-size N                  tokens per KV block
  --kv-cache-bytes N              bytes of KV cache to allocate (CPU)
  --device D                      cpu (default), cuda or cuda:N (a build with the CUDA backend)
  --gpu-memory-utilization F      GPU memory share for weights + activations + KV cache (default 0.9)
  --enforce-eager                 GPU: no CUDA graphs
  --threads N                     CPU compute threads (default: the physical cores)
  --cpu-precision P               CPU quant matmuls: fast (default; int8 activations) or exact (f32)
  --dtype T                       GPU: auto (default: the checkpoint's), bfloat16, float16 (half) or float32 (float)
  --enable-prefix-caching / --no-enable-prefix-caching
  --prefix-caching-hash-algo A    block hash of the prefix cache: sha256 (default, collision-resistant) or xxhash
                                  (faster, 128-bit, not collision-resistant against crafted prompts)
  --chat-template FILE|TEMPLATE   a Jinja chat template file, or the template itself
  --trust-request-chat-template   render \`chat_template\` sent in requests (default: refused with 400)
  --seed N                        default seed for requests that set none
  --skip-tokenizer-init           do not load the tokenizer: /v1/completions takes token-id prompts and returns
                                  token ids (\`token_ids\` on each choice); text routes and stop strings get 400
tool calling and reasoning:
  --enable-auto-tool-choice       parse tool calls out of answers for \`tool_choice: "auto"\` (default: 400)
  --tool-call-parser NAME         ${TOOL_PARSER_NAMES.join(', ')} (default: from the chat template, else hermes)
  --reasoning-parser NAME         ${REASONING_PARSER_NAMES.join(', ')}: <think> text goes to \`reasoning_content\`
server:
  --host HOST                     address to listen on (default ${DEFAULT_HOST})
  --port N                        port (default ${DEFAULT_PORT}; 0 = pick a free one)
  --api-key KEY                   require \`Authorization: Bearer KEY\` on /v1/*, /tokenize, /detokenize
                                  (also from $PAGEDLLM_API_KEY; /, /health, /version, /metrics stay open)
  --max-waiting N                 at most N requests wait for their first token; more get 503 + Retry-After
                                  (default ${DEFAULT_MAX_WAITING})
  --max-request-prompt-tokens N   most prompt tokens in one request, summed over its prompts (default ${DEFAULT_MAX_REQUEST_PROMPT_TOKENS})
  --max-body-bytes N              largest request body, 413 above it (default ${DEFAULT_BODY_LIMIT_BYTES})
  --shutdown-timeout SECONDS      on SIGTERM/SIGINT, let in-flight requests finish this long (default ${DEFAULT_SHUTDOWN_TIMEOUT_MS / 1000})
  --disable-log-requests          no per-request log lines
  -h, --help`;

const flags = {
  model: { type: 'string' },
  'served-model-name': { type: 'string', multiple: true },
  host: { type: 'string' },
  port: { type: 'string' },
  'api-key': { type: 'string' },
  'max-model-len': { type: 'string' },
  'max-num-seqs': { type: 'string' },
  'max-num-batched-tokens': { type: 'string' },
  'block-size': { type: 'string' },
  'kv-cache-bytes': { type: 'string' },
  device: { type: 'string' },
  'gpu-memory-utilization': { type: 'string' },
  'enforce-eager': { type: 'boolean' },
  dtype: { type: 'string' },
  threads: { type: 'string' },
  'cpu-precision': { type: 'string' },
  'enable-prefix-caching': { type: 'boolean' },
  'prefix-caching-hash-algo': { type: 'string' },
  'trust-request-chat-template': { type: 'boolean' },
  'max-request-prompt-tokens': { type: 'string' },
  'no-enable-prefix-caching': { type: 'boolean' },
  'chat-template': { type: 'string' },
  seed: { type: 'string' },
  'max-waiting': { type: 'string' },
  'max-body-bytes': { type: 'string' },
  'shutdown-timeout': { type: 'string' },
  'disable-log-requests': { type: 'boolean' },
  'enable-auto-tool-choice': { type: 'boolean' },
  'tool-call-parser': { type: 'string' },
  'reasoning-parser': { type: 'string' },
  'skip-tokenizer-init': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

function positive(name: string, value: number | undefined, min = 1): number | undefined {
  if (value !== undefined && value < min) throw new UsageError(`--${name} must be at least ${min}, got ${value}`);
  return value;
}

/** A `--tool-call-parser` / `--reasoning-parser` value: one of `names`. */
function parserName(flag: string, value: string | undefined, names: readonly string[]): string | undefined {
  if (value !== undefined && !names.includes(value)) {
    throw new UsageError(`--${flag} must be one of ${names.join(', ')}, got '${value}'`);
  }
  return value;
}

/** `--chat-template` is a file path, or (when it looks like Jinja) the template itself. */
export function loadChatTemplate(value: string): string {
  if (value.includes('{')) return value;
  try {
    return fs.readFileSync(value, 'utf8');
  } catch (err) {
    throw new UsageError(`--chat-template: cannot read '${value}': ${(err as Error).message}`);
  }
}

/** vLLM allows `--served-model-name a b`; node's parser takes one value per flag, so trailing positionals join. */
function servedNames(values: string[] | undefined, positionals: string[]): string[] {
  const names = [...(values ?? []), ...positionals];
  if (positionals.length > 0 && values === undefined) {
    throw new UsageError(`unexpected argument '${positionals[0]}'`);
  }
  return names.flatMap((n) => n.split(',')).filter((n) => n.length > 0);
}

/** Parses `pagedllm serve` flags; returns null when help was asked for (after printing it). */
export function parseServeArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): ServerOptions | null {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: flags, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values: v, positionals } = parsed;
  if (v.help) {
    process.stdout.write(SERVE_USAGE + '\n');
    return null;
  }
  if (v['enable-prefix-caching'] && v['no-enable-prefix-caching']) {
    throw new UsageError('--enable-prefix-caching and --no-enable-prefix-caching contradict each other');
  }
  const port = intFlag('port', v.port);
  if (port !== undefined && (port < 0 || port > 65535)) throw new UsageError(`--port must be in [0, 65535], got ${port}`);
  const shutdownSeconds = v['shutdown-timeout'] === undefined ? undefined : Number(v['shutdown-timeout']);
  if (shutdownSeconds !== undefined && !(Number.isFinite(shutdownSeconds) && shutdownSeconds >= 0)) {
    throw new UsageError(`--shutdown-timeout expects seconds >= 0, got '${v['shutdown-timeout']}'`);
  }
  const engine: LLMOptions = {};
  const setEngine = <K extends keyof LLMOptions>(key: K, value: LLMOptions[K] | undefined) => {
    if (value !== undefined) engine[key] = value;
  };
  setEngine('model', v.model);
  setEngine('maxModelLen', positive('max-model-len', intFlag('max-model-len', v['max-model-len'])));
  setEngine('maxNumSeqs', positive('max-num-seqs', intFlag('max-num-seqs', v['max-num-seqs'])));
  setEngine('maxNumBatchedTokens', positive('max-num-batched-tokens', intFlag('max-num-batched-tokens', v['max-num-batched-tokens'])));
  setEngine('blockSize', positive('block-size', intFlag('block-size', v['block-size'])));
  setEngine('kvCacheBytes', positive('kv-cache-bytes', intFlag('kv-cache-bytes', v['kv-cache-bytes'])));
  setEngine('seed', positive('seed', intFlag('seed', v.seed), 0));
  setEngine('device', v.device);
  setEngine('numThreads', positive('threads', intFlag('threads', v.threads)));
  setEngine('cpuPrecision', cpuPrecisionFlag(v['cpu-precision']));
  if (v['gpu-memory-utilization'] !== undefined) {
    const f = Number(v['gpu-memory-utilization']);
    if (!(f > 0 && f <= 1)) throw new UsageError(`--gpu-memory-utilization must be in (0, 1], got '${v['gpu-memory-utilization']}'`);
    engine.gpuMemoryUtilization = f;
  }
  if (v['enforce-eager']) engine.enforceEager = true;
  if (v['skip-tokenizer-init']) engine.skipTokenizerInit = true;
  if (v.dtype !== undefined) {
    const dtypes = ['auto', 'bfloat16', 'float16', 'half', 'float32', 'float'] as const;
    const d = dtypes.find((t) => t === v.dtype);
    if (!d) throw new UsageError(`--dtype must be one of ${dtypes.join(', ')}, got '${v.dtype}'`);
    engine.dtype = d;
  }
  if (v['enable-prefix-caching']) engine.enablePrefixCaching = true;
  if (v['no-enable-prefix-caching']) engine.enablePrefixCaching = false;
  if (v['prefix-caching-hash-algo'] !== undefined) {
    const algos = ['sha256', 'xxhash'] as const;
    const a = algos.find((x) => x === v['prefix-caching-hash-algo']);
    if (!a) throw new UsageError(`--prefix-caching-hash-algo must be one of ${algos.join(', ')}, got '${v['prefix-caching-hash-algo']}'`);
    engine.prefixCachingHashAlgo = a;
  }

  const apiKey = v['api-key'] ?? env.PAGEDLLM_API_KEY;
  return resolveServerOptions({
    host: v.host,
    port,
    apiKey: apiKey === undefined || apiKey === '' ? null : apiKey,
    servedModelName: servedNames(v['served-model-name'], positionals),
    maxWaiting: positive('max-waiting', intFlag('max-waiting', v['max-waiting']), 0),
    maxRequestPromptTokens: positive('max-request-prompt-tokens', intFlag('max-request-prompt-tokens', v['max-request-prompt-tokens'])),
    trustRequestChatTemplate: v['trust-request-chat-template'],
    bodyLimitBytes: positive('max-body-bytes', intFlag('max-body-bytes', v['max-body-bytes'])),
    chatTemplate: v['chat-template'] === undefined ? undefined : loadChatTemplate(v['chat-template']),
    disableLogRequests: v['disable-log-requests'],
    enableAutoToolChoice: v['enable-auto-tool-choice'],
    toolCallParser: parserName('tool-call-parser', v['tool-call-parser'], TOOL_PARSER_NAMES),
    reasoningParser: parserName('reasoning-parser', v['reasoning-parser'], REASONING_PARSER_NAMES),
    shutdownTimeoutMs: shutdownSeconds === undefined ? undefined : shutdownSeconds * 1000,
    engine,
  });
}
