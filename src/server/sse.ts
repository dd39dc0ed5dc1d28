/**
 * Server-sent events as OpenAI streams them: `data: {json}\n\n` per chunk, `data: [DONE]\n\n` at the end. An error
 * after the stream started is sent as a `data: {"error": ...}` chunk (vLLM's behaviour) followed by `[DONE]`, since
 * the status line is already gone. When the client disconnects, `onAbort` runs at once.
 */

import type { Context } from 'hono';
import { type SSEStreamingApi, streamSSE } from 'hono/streaming';

import { toHttpError } from './errors.js';

export interface ChunkWriter {
  send(chunk: unknown): Promise<void>;
  /** True once the client went away. */
  readonly aborted: boolean;
}

export function sseResponse(
  c: Context,
  onAbort: () => void,
  body: (out: ChunkWriter) => Promise<void>,
  errorContext?: Parameters<typeof toHttpError>[1],
): Response {
  return streamSSE(c, async (stream: SSEStreamingApi) => {
    stream.onAbort(onAbort);
    const out: ChunkWriter = {
      send: (chunk) => stream.writeSSE({ data: JSON.stringify(chunk) }),
      get aborted() {
        return stream.aborted;
      },
    };
    try {
      await body(out);
    } catch (err) {
      if (stream.aborted) return;
      await out.send(toHttpError(err, errorContext).body());
    }
    if (!stream.aborted) await stream.writeSSE({ data: '[DONE]' });
  });
}
