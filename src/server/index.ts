/**
 * `pagedllm/server`: the OpenAI-compatible server as a library — `createApp` (a Hono app over an existing `LLM`,
 * to mount in your own server or test with `app.request()`) and `startServer` (what `pagedllm serve` runs).
 */

export { createApp, type ServerState } from './app.js';
export { startServer, type RunningServer, type StartOptions } from './serve.js';
export { type ServerOptions } from './options.js';
