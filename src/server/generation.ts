/**
 * Runs the engine requests of one HTTP request (one per prompt) and merges their streams. `startGeneration`
 * returns only once every request was accepted by the engine, so submit-time errors (bad parameters, prompt too
 * long, token ids outside the vocabulary) surface as HTTP errors before any response byte is sent. Every request
 * runs under one AbortController: the caller aborts it when the client goes away, shutdown aborts it when the grace
 * period ends, and either way the engine frees the requests' KV blocks. Admission (`--max-waiting`) and metrics
 * bookkeeping happen here, once for streamed and non-streamed responses alike.
 */

import type { Prompt } from '../llm.js';
import type { StreamDelta } from '../outputs.js';
import type { SamplingParamsInput } from '../sampling-params.js';
import { HttpError, toHttpError } from './errors.js';
import type { ServerState } from './state.js';

export interface EngineJob {
  prompt: Prompt;
  params: SamplingParamsInput;
  /** BOS etc. for text prompts (completions: true; chat prompts carry their own). */
  addSpecialTokens: boolean;
  /** vLLM's `cache_salt`: prefix-cache isolation between tenants. */
  cacheSalt?: string;
}

export interface JobChunk {
  /** Which job (prompt) this belongs to. */
  job: number;
  delta: StreamDelta;
}

export interface Generation {
  /** All jobs' chunks as they come, interleaved. Ends when every job finished; throws on engine failure. */
  chunks: AsyncGenerator<JobChunk>;
  /** Stops every job now (idempotent). */
  abort(): void;
}

type Settled = { ok: true; value: IteratorResult<StreamDelta> } | { ok: false; error: unknown };

function settle(p: Promise<IteratorResult<StreamDelta>>): Promise<Settled> {
  return p.then(
    (value) => ({ ok: true, value }),
    (error: unknown) => ({ ok: false, error }),
  );
}


/**
 * Submits `jobs`; throws an `HttpError` when the server is overloaded or the engine refuses one of them.
 * `signal` (the client's) aborts everything.
 */
export async function startGeneration(
  state: ServerState,
  jobs: EngineJob[],
  opts: { requestId: string; signal?: AbortSignal; promptParam?: string; renames?: Record<string, string> },
): Promise<Generation> {
  const { llm, metrics } = state;
  if (state.draining) {
    throw new HttpError(503, 'the server is shutting down', { code: 'shutting_down', headers: { 'Retry-After': '1' } });
  }
  const releaseOne = state.admission.admit(jobs.length);
  const released = jobs.map(() => false);
  const releaseOnce = (i: number) => {
    if (!released[i]) {
      released[i] = true;
      releaseOne();
    }
  };
  const controller = new AbortController();
  const onClientAbort = () => controller.abort(opts.signal?.reason);
  if (opts.signal?.aborted) controller.abort(opts.signal.reason);
  opts.signal?.addEventListener('abort', onClientAbort, { once: true });
  state.inFlight.add(controller);
  const cleanup = () => {
    opts.signal?.removeEventListener('abort', onClientAbort);
    state.inFlight.delete(controller);
    jobs.forEach((_, i) => releaseOnce(i));
  };

  // Every job is either queued (`onAdded`) or refused (its first `next()` fails) before the response starts, so a
  // refusal is an HTTP error, not a broken stream. Queuing is synchronous except for a constrained request, whose
  // grammar compile runs off the event loop.
  let queued = 0;
  let decided!: () => void;
  const allDecided = new Promise<void>((resolve) => (decided = resolve));
  const onAdded = () => {
    if (++queued === jobs.length) decided();
  };
  if (jobs.length === 0) decided();
  const gens = jobs.map((job) =>
    llm.stream(job.prompt, job.params, {
      signal: controller.signal,
      requestId: state.engineRequestId(opts.requestId),
      addSpecialTokens: job.addSpecialTokens,
      onAdded,
      ...(job.cacheSalt === undefined ? {} : { cacheSalt: job.cacheSalt }),
    }),
  );
  const pending = new Map<number, Promise<{ job: number; r: Settled }>>();
  let early: Settled | undefined;
  gens.forEach((g, job) => {
    pending.set(
      job,
      settle(g.next()).then((r) => {
        if (!r.ok) {
          early ??= r;
          decided();
        }
        // A generator that ended without a delta or an error was still decided.
        if (r.ok && r.value.done) decided();
        return { job, r };
      }),
    );
  });
  await allDecided;
  if (early && !early.ok) {
    controller.abort();
    cleanup();
    throw toHttpError(early.error, { promptParam: opts.promptParam, renames: opts.renames });
  }

  const finished = gens.map(() => false);
  const lastTokenAt = new Map<string, number>();
  async function* merged(): AsyncGenerator<JobChunk> {
    try {
      while (pending.size > 0) {
        const { job, r } = await Promise.race(pending.values());
        pending.delete(job);
        if (!r.ok) throw r.error;
        if (r.value.done) {
          finished[job] = true;
          continue;
        }
        const delta = r.value.value;
        releaseOnce(job);
        const now = performance.now() / 1000;
        if (delta.tokenIds.length > 0) {
          const key = `${job}:${delta.index}`;
          const last = lastTokenAt.get(key);
          if (last !== undefined) {
            const each = (now - last) / delta.tokenIds.length;
            for (let k = 0; k < delta.tokenIds.length; k++) metrics.observeInterToken(each);
          }
          lastTokenAt.set(key, now);
        }
        if (delta.finished) {
          finished[job] = true;
          metrics.observeFinished(delta.metrics, delta.finishReason);
        }
        pending.set(
          job,
          settle(gens[job]!.next()).then((next) => ({ job, r: next })),
        );
        yield { job, delta };
      }
    } finally {
      const unfinished = finished.filter((f) => !f).length;
      if (unfinished > 0) {
        controller.abort();
        for (let i = 0; i < unfinished; i++) metrics.observeAborted();
        // Let each generator run its own cleanup (engine abort) now.
        await Promise.allSettled(gens.map((g) => g.return(undefined)));
      }
      cleanup();
    }
  }
  return { chunks: merged(), abort: () => controller.abort() };
}
