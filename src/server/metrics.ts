/**
 * Prometheus metrics under vLLM's names (so dashboards built for vLLM work unchanged), each labelled `model_name`.
 * Gauges and counters that mirror the engine's own statistics (`llm.stats()`) are refreshed at scrape time; the
 * counters only ever move forward. Per-request histograms are fed by `observeFinished` with the engine's timestamps
 * (arrival, first scheduled, first token, finished) and by `observeInterToken` as tokens stream out.
 */

import { Counter, Gauge, Histogram, Registry } from 'prom-client';

import type { LLM } from '../llm.js';
import type { FinishReason, RequestMetrics } from '../outputs.js';

const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

/** vLLM's 1-2-5 buckets up to `max`. */
function buckets125(max: number): number[] {
  const out: number[] = [];
  for (let exp = 1; ; exp *= 10) {
    for (const m of [1, 2, 5]) {
      if (m * exp > max) return out;
      out.push(m * exp);
    }
  }
}

/** A counter that follows a monotonic engine total (it never moves backwards, even if the source resets). */
function mirroredCounter(registry: Registry, name: string, help: string, model: string, read: () => number | null): Counter {
  let last = 0;
  const counter = new Counter({
    name,
    help,
    labelNames: ['model_name'],
    registers: [registry],
    collect() {
      const now = read();
      if (now === null) return;
      if (now > last) this.inc({ model_name: model }, now - last);
      last = Math.max(last, now);
    },
  });
  counter.inc({ model_name: model }, 0);
  return counter;
}

export class ServerMetrics {
  readonly registry = new Registry();
  private readonly model: string;
  private readonly success: Counter;
  private readonly ttft: Histogram;
  private readonly itl: Histogram;
  private readonly e2e: Histogram;
  private readonly queue: Histogram;
  private readonly promptTokens: Histogram;
  private readonly generationTokens: Histogram;

  constructor(llm: LLM, modelName: string) {
    this.model = modelName;
    const registry = this.registry;
    const labels = { model_name: modelName };
    const stats = () => (llm.isAlive ? llm.stats() : null);
    let cached: ReturnType<typeof stats> = null;
    let cachedAt = -1;
    // One engine stats call per scrape, shared by every mirrored metric.
    const snapshot = () => {
      const now = Date.now();
      if (now - cachedAt > 50) {
        try {
          cached = stats();
        } catch {
          cached = null;
        }
        cachedAt = now;
      }
      return cached;
    };
    const gauge = (name: string, help: string, read: (s: NonNullable<typeof cached>) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['model_name'],
        registers: [registry],
        collect() {
          const s = snapshot();
          if (s) this.set(labels, read(s));
        },
      });
    gauge('vllm:num_requests_running', 'Number of requests in model execution batches.', (s) => s.numRunning);
    gauge('vllm:num_requests_waiting', 'Number of requests waiting to be processed.', (s) => s.numWaiting);
    gauge('vllm:kv_cache_usage_perc', 'KV-cache usage. 1 means 100 percent usage (cached free blocks count as free).', (s) =>
      s.kvBlocksTotal > 0 ? s.kvBlocksInUse / s.kvBlocksTotal : 0,
    );
    // Not a vLLM metric: the PagedAttention paper's KV waste (slots of the running requests' blocks holding no
    // token), live after the last step.
    gauge('pagedllm:kv_cache_waste_perc', 'Share of the running requests\' KV slots that hold no token (1 = 100 percent).', (s) =>
      s.kvSlotsHeld > 0 ? s.kvSlotsUnused / s.kvSlotsHeld : 0,
    );
    const mirror = (name: string, help: string, read: (s: NonNullable<typeof cached>) => number) =>
      mirroredCounter(registry, name, help, modelName, () => {
        const s = snapshot();
        return s ? read(s) : null;
      });
    mirror('vllm:prompt_tokens_total', 'Number of prefill tokens processed.', (s) => s.promptTokensTotal);
    mirror('vllm:generation_tokens_total', 'Number of generation tokens processed.', (s) => s.generationTokensTotal);
    // prometheus_client (vLLM) exposes its counters with a `_total` suffix; these are the names dashboards query.
    mirror('vllm:prefix_cache_queries_total', 'Prefix cache queries, in terms of number of queried tokens.', (s) => s.prefixCacheQueries);
    mirror('vllm:prefix_cache_hits_total', 'Prefix cache hits, in terms of number of cached tokens.', (s) => s.prefixCacheHits);
    mirror('vllm:num_preemptions_total', 'Cumulative number of preemptions from the engine.', (s) => s.numPreemptions);

    this.success = new Counter({
      name: 'vllm:request_success_total',
      help: 'Count of finished requests, by finish reason.',
      labelNames: ['model_name', 'finished_reason'],
      registers: [registry],
    });
    for (const reason of ['stop', 'length', 'abort']) this.success.inc({ model_name: modelName, finished_reason: reason }, 0);
    const histogram = (name: string, help: string, bucketList: number[]) =>
      new Histogram({ name, help, buckets: bucketList, labelNames: ['model_name'], registers: [registry] });
    this.ttft = histogram('vllm:time_to_first_token_seconds', 'Histogram of time to first token in seconds.', TTFT_BUCKETS);
    this.itl = histogram('vllm:inter_token_latency_seconds', 'Histogram of inter-token latency in seconds.', ITL_BUCKETS);
    this.e2e = histogram('vllm:e2e_request_latency_seconds', 'Histogram of end to end request latency in seconds.', LATENCY_BUCKETS);
    this.queue = histogram('vllm:request_queue_time_seconds', 'Histogram of time spent in WAITING phase for request.', LATENCY_BUCKETS);
    const tokenBuckets = buckets125(llm.modelInfo.maxModelLen);
    this.promptTokens = histogram('vllm:request_prompt_tokens', 'Number of prefill tokens processed.', tokenBuckets);
    this.generationTokens = histogram('vllm:request_generation_tokens', 'Number of generation tokens processed.', tokenBuckets);
  }

  /** One engine request ended normally; `m` is the engine's record of it. */
  observeFinished(m: RequestMetrics | undefined, reason: FinishReason | null): void {
    const labels = { model_name: this.model };
    this.success.inc({ ...labels, finished_reason: reason ?? 'stop' });
    if (!m) return;
    if (m.firstTokenTime !== null) this.ttft.observe(labels, Math.max(0, m.firstTokenTime - m.arrivalTime));
    if (m.firstScheduledTime !== null) this.queue.observe(labels, Math.max(0, m.firstScheduledTime - m.arrivalTime));
    if (m.finishedTime !== null) this.e2e.observe(labels, Math.max(0, m.finishedTime - m.arrivalTime));
    this.promptTokens.observe(labels, m.numPromptTokens);
    this.generationTokens.observe(labels, m.numGenerationTokens);
  }

  /** One engine request was aborted (client went away, shutdown). */
  observeAborted(): void {
    this.success.inc({ model_name: this.model, finished_reason: 'abort' });
  }

  /** Seconds between two consecutive tokens of one sequence. */
  observeInterToken(seconds: number): void {
    this.itl.observe({ model_name: this.model }, seconds);
  }

  async render(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
