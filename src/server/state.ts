/**
 * What the routes share: the one `LLM`, the resolved options and model names, the metrics, the admission counter
 * behind `--max-waiting`, and the abort controllers of in-flight requests (so shutdown can abort what is left).
 */

import { randomUUID } from 'node:crypto';

import type { LLM } from '../llm.js';
import { HttpError } from './errors.js';
import { ServerMetrics } from './metrics.js';
import type { ServerOptions } from './options.js';

/**
 * Counts engine requests that were admitted but have not produced output yet (queued in the engine or in
 * prefill). When more than `maxWaiting` are already waiting, a new request is refused with 503 + Retry-After
 * instead of growing the queue.
 */
export class Admission {
  private waiting = 0;

  constructor(
    private readonly maxWaiting: number | null,
    private readonly retryAfterSeconds: number,
  ) {}

  get numWaiting(): number {
    return this.waiting;
  }

  /**
   * Admits `count` engine requests (one HTTP request's prompts) or throws a 503; call the returned function once
   * per engine request, on its first output or its end.
   */
  admit(count: number): () => void {
    if (this.maxWaiting !== null && this.waiting > this.maxWaiting) {
      throw new HttpError(
        503,
        `the server is overloaded: ${this.waiting} requests are already waiting (--max-waiting ${this.maxWaiting}); retry later`,
        { code: 'server_overloaded', headers: { 'Retry-After': String(this.retryAfterSeconds) } },
      );
    }
    this.waiting += count;
    return () => {
      this.waiting -= 1;
    };
  }
}

export interface ServerState {
  llm: LLM;
  options: ServerOptions;
  /** Names accepted as `model`; the first is reported. */
  modelNames: string[];
  metrics: ServerMetrics;
  admission: Admission;
  /** Controllers of requests still generating (aborted on shutdown). */
  inFlight: Set<AbortController>;
  /** Set when shutdown began: new generation requests get 503. */
  draining: boolean;
  /** Unique engine request id for one prompt of an HTTP request. */
  engineRequestId(httpRequestId: string): string;
}

export function createState(llm: LLM, options: ServerOptions): ServerState {
  const modelNames = options.servedModelName.length > 0 ? options.servedModelName : [llm.modelInfo.name];
  let seq = 0;
  return {
    llm,
    options,
    modelNames,
    metrics: new ServerMetrics(llm, modelNames[0]!),
    admission: new Admission(options.maxWaiting, options.retryAfterSeconds),
    inFlight: new Set(),
    draining: false,
    engineRequestId: (httpRequestId) => `${httpRequestId}-${(seq++).toString(36)}`,
  };
}

export function newRequestId(): string {
  return randomUUID().replaceAll('-', '');
}
