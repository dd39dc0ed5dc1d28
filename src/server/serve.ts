/**
 * `startServer(options)`: creates the LLM once, logs what was loaded (model, context length, KV blocks, max
 * concurrency), and listens (`port: 0` picks a free port; the actual address is logged as
 * `listening on http://HOST:PORT` and returned). `shutdown()` is graceful: stop accepting connections, let
 * in-flight requests finish for up to `shutdownTimeoutMs`, abort what is left, close the engine. With
 * `handleSignals`, SIGTERM/SIGINT trigger it.
 */

import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';

import { serve } from '@hono/node-server';
import type { Hono } from 'hono';

import { LLM } from '../llm.js';
import type { AppEnv } from './app-env.js';
import { createApp } from './app.js';
import { type ServerOptions, type ServerOptionsInput, resolveServerOptions } from './options.js';
import { VERSION } from './routes/health.js';
import type { ServerState } from './state.js';

export interface RunningServer {
  app: Hono<AppEnv>;
  state: ServerState;
  llm: LLM;
  server: Server;
  host: string;
  port: number;
  /** `http://HOST:PORT` */
  url: string;
  /** Graceful stop (idempotent): resolves once the engine is closed. */
  shutdown(reason?: string): Promise<void>;
}

export interface StartOptions extends ServerOptionsInput {
  /** Use this engine instead of creating one from `engine` (it is still closed on shutdown). */
  llm?: LLM;
  /** Install SIGTERM/SIGINT handlers that shut down gracefully and then exit 0. */
  handleSignals?: boolean;
}

function listen(app: Hono<AppEnv>, options: ServerOptions): Promise<{ server: Server; port: number }> {
  return new Promise((resolve, reject) => {
    const server = serve({ fetch: app.fetch, port: options.port, hostname: options.host }) as Server;
    server.once('error', reject);
    server.once('listening', () => {
      server.off('error', reject);
      resolve({ server, port: (server.address() as AddressInfo).port });
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startServer(input: StartOptions = {}): Promise<RunningServer> {
  const { llm: given, handleSignals, ...rest } = input;
  const options = resolveServerOptions(rest);
  const log = options.log;
  const llm = given ?? (await LLM.create(options.engine));
  const info = llm.modelInfo;
  const { app, state } = createApp(llm, options);
  log(`pagedllm ${VERSION}: model ${info.name} (${info.path}), served as ${state.modelNames.join(', ')}`);
  log(
    `max model len ${info.maxModelLen} tokens; KV cache ${info.numKvBlocks} blocks of ${info.blockSize} tokens; ` +
      `max concurrency ${info.maxConcurrency.toFixed(2)}x requests of full length; ${info.numThreads} threads on ${info.device}` +
      (info.device === 'cpu' ? ` (${info.cpuIsa} kernels, ${info.cpuPrecision} precision)` : ''),
  );

  log(`start-up ${info.startupS.toFixed(2)} s: ${info.startupPhases.map((p) => `${p.name} ${p.seconds.toFixed(2)} s`).join(', ')}`);
  if (!info.hasTokenizer) {
    log('no tokenizer (--skip-tokenizer-init, or none in the model): /v1/completions takes token-id prompts and returns token_ids');
  }

  let listening: { server: Server; port: number };
  try {
    listening = await listen(app, options);
  } catch (err) {
    llm.close();
    throw err;
  }
  const { server, port } = listening;
  const hostForUrl = options.host.includes(':') ? `[${options.host}]` : options.host;
  const url = `http://${hostForUrl}:${port}`;
  log(`listening on ${url}`);
  if (options.apiKey !== null) log('API key required on /v1/*, /tokenize, /detokenize');

  let stopping: Promise<void> | null = null;
  const shutdown = (reason = 'shutdown requested'): Promise<void> => {
    stopping ??= (async () => {
      state.draining = true;
      log(`${reason}: no new connections; waiting up to ${options.shutdownTimeoutMs / 1000}s for ${state.inFlight.size} in-flight request(s)`);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const deadline = Date.now() + options.shutdownTimeoutMs;
      while (state.inFlight.size > 0 && Date.now() < deadline) await sleep(50);
      if (state.inFlight.size > 0) {
        log(`aborting ${state.inFlight.size} request(s) still running`);
        for (const controller of state.inFlight) controller.abort(new Error('server shutting down'));
        const flushBy = Date.now() + 1000;
        while (state.inFlight.size > 0 && Date.now() < flushBy) await sleep(20);
      }
      server.closeAllConnections();
      await closed;
      llm.close();
      log('engine closed; bye');
    })();
    return stopping;
  };

  if (handleSignals) {
    const onSignal = (signal: NodeJS.Signals) => {
      shutdown(`received ${signal}`).then(
        () => process.exit(0),
        (err: unknown) => {
          log(`shutdown failed: ${String(err)}`);
          process.exit(1);
        },
      );
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  }
  return { app, state, llm, server, host: options.host, port, url, shutdown };
}
