/**
 * `pagedllm generate [prompt]`: one prompt (argument or stdin) through the engine. Streams text to stdout by
 * default; `--no-stream` collects it first, `--json` prints the `RequestOutput` (or, with `--stream`, one JSON
 * `StreamDelta` per line). Progress goes to stderr so stdout stays clean for pipes.
 */

import path from 'node:path';
import { parseArgs } from 'node:util';

import { DEFAULT_MODEL_FILE } from '../engine-types.js';
import { AbortError } from '../errors.js';
import type { LLMOptions } from '../engine-types.js';
import { LLM, type ChatMessage } from '../llm.js';
import { type SamplingParamsInput, parseSamplingParams } from '../sampling-params.js';
import { UsageError, cpuPrecisionFlag, intFlag, numberFlag, readStdin } from './args.js';

export const GENERATE_USAGE = `usage: pagedllm generate [options] [prompt]

Generates a completion for the prompt (or stdin when no prompt is given).

model and engine:
  --model PATH              GGUF file or safetensors directory (default: ${DEFAULT_MODEL_FILE})
  --max-model-len N         cap the context length
  --kv-cache-bytes N        bytes of KV cache to allocate
  --device cpu|cuda|cuda:N  where the model runs (default cpu; cuda needs the -cuda package or a CUDA build)
  --dtype D                 GPU weights/KV dtype: auto, bfloat16, float16, float32 (default auto)
  --gpu-memory-utilization F  share of GPU memory for the engine (default 0.9)
  --enforce-eager           no CUDA graphs
  --threads N               CPU compute threads (default: the physical cores)
  --cpu-precision fast|exact  CPU quant matmuls: int8 activations (fast, default) or f32 (exact)
sampling:
  --max-tokens N            most tokens to generate (default 16)
  --temperature T           0 = greedy (default 1.0)
  --top-p P  --top-k K  --min-p P
  --seed N                  make sampling reproducible
  --n N                     number of completions
  --stop STR                stop string (repeatable)
  --repetition-penalty R  --frequency-penalty F  --presence-penalty P
  --logprobs N              top log-probs per token (0-20, shown with --json)
output:
  --chat                    send the prompt as a user chat message (applies the chat template)
  --system TEXT             system message for --chat
  --json                    print the RequestOutput as JSON (NDJSON deltas with --stream)
  --stream / --no-stream    stream text as it is generated (default: stream, unless --json or --n > 1)
  --quiet                   no progress on stderr
  -h, --help`;

const options = {
  model: { type: 'string' },
  'max-model-len': { type: 'string' },
  'kv-cache-bytes': { type: 'string' },
  device: { type: 'string' },
  dtype: { type: 'string' },
  'gpu-memory-utilization': { type: 'string' },
  'enforce-eager': { type: 'boolean' },
  threads: { type: 'string' },
  'cpu-precision': { type: 'string' },
  'max-tokens': { type: 'string' },
  temperature: { type: 'string' },
  'top-p': { type: 'string' },
  'top-k': { type: 'string' },
  'min-p': { type: 'string' },
  seed: { type: 'string' },
  n: { type: 'string' },
  stop: { type: 'string', multiple: true },
  'repetition-penalty': { type: 'string' },
  'frequency-penalty': { type: 'string' },
  'presence-penalty': { type: 'string' },
  logprobs: { type: 'string' },
  chat: { type: 'boolean' },
  system: { type: 'string' },
  json: { type: 'boolean' },
  stream: { type: 'boolean' },
  'no-stream': { type: 'boolean' },
  quiet: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

function modelLabel(model: string | undefined): string {
  const file = model === undefined ? DEFAULT_MODEL_FILE : path.basename(model.replace(/[\\/]+$/, ''));
  return file.replace(/\.gguf$/i, '').replace(/\.(Q\d\w*|F16|F32|BF16)$/i, '');
}

export async function generateCommand(argv: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values: v, positionals } = parsed;
  if (v.help) {
    process.stdout.write(GENERATE_USAGE + '\n');
    return;
  }
  if (v.stream && v['no-stream']) throw new UsageError('--stream and --no-stream contradict each other');

  let prompt = positionals.join(' ');
  if (positionals.length === 0) {
    if (process.stdin.isTTY) throw new UsageError('no prompt: pass one as an argument or on stdin\n\n' + GENERATE_USAGE);
    prompt = (await readStdin()).replace(/\r?\n$/, '');
  }

  const params: SamplingParamsInput = {};
  const set = <K extends keyof SamplingParamsInput>(key: K, value: SamplingParamsInput[K] | undefined) => {
    if (value !== undefined) params[key] = value;
  };
  set('maxTokens', intFlag('max-tokens', v['max-tokens']));
  set('temperature', numberFlag('temperature', v.temperature));
  set('topP', numberFlag('top-p', v['top-p']));
  set('topK', intFlag('top-k', v['top-k']));
  set('minP', numberFlag('min-p', v['min-p']));
  set('seed', intFlag('seed', v.seed));
  set('n', intFlag('n', v.n));
  set('stop', v.stop);
  set('repetitionPenalty', numberFlag('repetition-penalty', v['repetition-penalty']));
  set('frequencyPenalty', numberFlag('frequency-penalty', v['frequency-penalty']));
  set('presencePenalty', numberFlag('presence-penalty', v['presence-penalty']));
  set('logprobs', intFlag('logprobs', v.logprobs));

  // Bad values are usage errors: report them before spending seconds on loading the model.
  parseSamplingParams(params);
  const n = params.n ?? 1;
  const stream = v.stream ?? (!v['no-stream'] && !v.json && n === 1);
  const quiet = v.quiet ?? false;

  const started = performance.now();
  if (!quiet) process.stderr.write(`loading ${modelLabel(v.model)} ... `);
  let llm: LLM;
  try {
    llm = await LLM.create({
      model: v.model,
      maxModelLen: intFlag('max-model-len', v['max-model-len']),
      kvCacheBytes: intFlag('kv-cache-bytes', v['kv-cache-bytes']),
      device: v.device,
      dtype: v.dtype as LLMOptions['dtype'],
      gpuMemoryUtilization: numberFlag('gpu-memory-utilization', v['gpu-memory-utilization']),
      enforceEager: v['enforce-eager'],
      numThreads: intFlag('threads', v.threads),
      cpuPrecision: cpuPrecisionFlag(v['cpu-precision']),
    });
  } catch (err) {
    if (!quiet) process.stderr.write('failed\n');
    throw err;
  }
  if (!quiet) {
    const info = llm.modelInfo;
    const on = info.device === 'cpu' ? `cpu, ${info.cpuIsa} kernels, ${info.cpuPrecision} precision, ${info.numThreads} threads` : info.device;
    process.stderr.write(`done in ${((performance.now() - started) / 1000).toFixed(1)}s (${on})\n`);
  }

  const controller = new AbortController();
  const onSigint = () => controller.abort();
  process.once('SIGINT', onSigint);
  try {
    const opts = { signal: controller.signal };
    let text = prompt;
    if (v.chat) {
      const messages: ChatMessage[] = [];
      if (v.system !== undefined) messages.push({ role: 'system', content: v.system });
      messages.push({ role: 'user', content: prompt });
      text = llm.applyChatTemplate(messages);
    }
    // Chat prompts already carry their special tokens.
    const requestOpts = { ...opts, addSpecialTokens: !v.chat };
    if (stream) {
      for await (const chunk of llm.stream(text, params, requestOpts)) {
        if (v.json) process.stdout.write(JSON.stringify(chunk) + '\n');
        else if (n > 1) process.stdout.write(`[${chunk.index}] ${chunk.text}\n`);
        else process.stdout.write(chunk.text);
      }
      if (!v.json && n === 1) process.stdout.write('\n');
    } else {
      const [out] = await llm.generate(text, params, requestOpts);
      if (v.json) process.stdout.write(JSON.stringify(out, null, 2) + '\n');
      else if (out!.outputs.length === 1) process.stdout.write(out!.outputs[0]!.text + '\n');
      else for (const o of out!.outputs) process.stdout.write(`[${o.index}] ${o.text}\n`);
    }
  } catch (err) {
    if (err instanceof AbortError) {
      process.stderr.write('\ninterrupted\n');
      process.exitCode = 130;
      return;
    }
    throw err;
  } finally {
    process.off('SIGINT', onSigint);
    llm.close();
  }
}
