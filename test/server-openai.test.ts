/**
 * The real server on a real socket (port 0), driven by the official `openai` SDK as users would: completions and
 * chat, streamed and not, n > 1, logprobs, stop, seed reproducibility, abort mid-stream (the engine frees the
 * request: vllm:num_requests_running returns to 0), auth and error classes, and graceful shutdown.
 */

import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type RunningServer, startServer } from '../src/server/serve.js';
import { TEST_ENGINE, waitFor } from './helpers.js';

const MODEL = 'smol';
const KEY = 'sk-test-key';
let server: RunningServer;
let client: OpenAI;
const logLines: string[] = [];

beforeAll(async () => {
  server = await startServer({
    port: 0,
    engine: { ...TEST_ENGINE, maxNumSeqs: 4 },
    servedModelName: [MODEL],
    apiKey: KEY,
    shutdownTimeoutMs: 1500,
    log: (line) => logLines.push(line),
  });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
});

afterAll(async () => {
  await server?.shutdown('test over');
});

async function metricValue(name: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const m = new RegExp(`^${name}\\{model_name="${MODEL}"\\} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

async function waitForMetric(name: string, want: number, timeoutMs = 5000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if ((await metricValue(name)) === want) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

describe('start-up', () => {
  it('listens on a free port and logs model, context, KV blocks, concurrency and the address', () => {
    expect(server.port).toBeGreaterThan(0);
    const log = logLines.join('\n');
    expect(log).toContain('SmolLM2-135M-Instruct');
    expect(log).toMatch(/max model len 512/);
    expect(log).toMatch(/KV cache \d+ blocks/);
    expect(log).toMatch(/max concurrency/);
    expect(log).toContain(`listening on http://127.0.0.1:${server.port}`);
  });

  it('lists the model', async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([MODEL]);
  });
});

describe('completions', () => {
  it('non-streamed, n > 1, with usage', async () => {
    const res = await client.completions.create({ model: MODEL, prompt: 'The sky is', max_tokens: 4, n: 2, seed: 3 });
    expect(res.choices).toHaveLength(2);
    expect(res.choices.every((c) => typeof c.text === 'string' && c.finish_reason !== null)).toBe(true);
    expect(res.usage!.prompt_tokens).toBeGreaterThan(0);
  });

  it('streamed text matches the non-streamed greedy text', async () => {
    const params = { model: MODEL, prompt: 'Once upon a time', max_tokens: 8, temperature: 0 };
    const full = await client.completions.create(params);
    let text = '';
    let finish: string | null = null;
    for await (const chunk of await client.completions.create({ ...params, stream: true })) {
      text += chunk.choices[0]?.text ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(text).toBe(full.choices[0]!.text);
    expect(finish).toBe(full.choices[0]!.finish_reason);
  });

  it('logprobs in the completions format', async () => {
    const res = await client.completions.create({ model: MODEL, prompt: 'Hello', max_tokens: 3, logprobs: 2, temperature: 0 });
    const lp = res.choices[0]!.logprobs!;
    expect(lp.tokens!.length).toBe(res.usage!.completion_tokens);
    expect(lp.token_logprobs!.every((x) => x <= 0)).toBe(true);
    expect(lp.top_logprobs!.length).toBe(lp.tokens!.length);
    expect(lp.text_offset![0]).toBe(0);
  });

  it('stop strings', async () => {
    const base = await client.completions.create({ model: MODEL, prompt: 'A, B, C,', max_tokens: 10, temperature: 0 });
    const text = base.choices[0]!.text;
    const stop = text.trim().slice(0, 1);
    const res = await client.completions.create({ model: MODEL, prompt: 'A, B, C,', max_tokens: 10, temperature: 0, stop });
    expect(res.choices[0]!.finish_reason).toBe('stop');
    expect(res.choices[0]!.text).toBe(text.slice(0, text.indexOf(stop)));
  });

  it('the same seed gives the same sample', async () => {
    const params = { model: MODEL, prompt: 'My favourite food is', max_tokens: 8, temperature: 1, seed: 1234 };
    const a = await client.completions.create(params);
    const b = await client.completions.create(params);
    expect(b.choices[0]!.text).toBe(a.choices[0]!.text);
  });
});

describe('chat', () => {
  const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [
    { role: 'system', content: 'You are a helpful assistant.' },
    { role: 'user', content: 'What is 2 + 2?' },
  ];

  it('non-streamed with logprobs and n > 1', async () => {
    const res = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 4, n: 2, logprobs: true, top_logprobs: 3 });
    expect(res.object).toBe('chat.completion');
    expect(res.choices).toHaveLength(2);
    const choice = res.choices[0]!;
    expect(choice.message.role).toBe('assistant');
    const content = choice.logprobs!.content!;
    // The tokens' bytes rebuild the text; a sampled EOS that ended the choice is in the log-probs, not the text.
    const text = Buffer.from(content.flatMap((t) => t.bytes ?? [])).toString('utf8');
    const eos = choice.finish_reason === 'stop' ? '<|im_end|>' : '';
    expect([choice.message.content, `${choice.message.content}${eos}`]).toContain(text);
    expect(content[0]!.top_logprobs).toHaveLength(3);
    expect(res.usage!.completion_tokens).toBe(res.choices.reduce((n, c) => n + (c.logprobs?.content?.length ?? 0), 0));
  });

  it('streamed: role first, then content, usage at the end', async () => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages,
      max_completion_tokens: 6,
      stream: true,
      stream_options: { include_usage: true },
      temperature: 0,
    });
    const chunks: OpenAI.Chat.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
    const full = await client.chat.completions.create({ model: MODEL, messages, max_completion_tokens: 6, temperature: 0 });
    expect(text).toBe(full.choices[0]!.message.content);
    expect(chunks.at(-1)!.usage).toEqual(full.usage);
    expect(chunks.at(-2)!.choices[0]!.finish_reason).toBe(full.choices[0]!.finish_reason);
  });

  it('aborting mid-stream frees the engine request', async () => {
    const controller = new AbortController();
    const stream = await client.chat.completions.create(
      { model: MODEL, messages, max_tokens: 400, stream: true, ignore_eos: true } as OpenAI.Chat.ChatCompletionCreateParamsStreaming,
      { signal: controller.signal },
    );
    let seen = 0;
    // The SDK ends the iteration (or throws APIUserAbortError, depending on timing) once its signal aborts.
    try {
      for await (const _chunk of stream) {
        seen += 1;
        if (seen === 3) {
          expect(await metricValue('vllm:num_requests_running')).toBe(1);
          controller.abort();
        }
      }
    } catch (err) {
      expect(err).toBeInstanceOf(OpenAI.APIUserAbortError);
    }
    expect(seen).toBe(3);
    expect(await waitForMetric('vllm:num_requests_running', 0)).toBe(true);
    expect(await waitFor(() => server.llm.stats().kvBlocksInUse === 0, 5000)).toBe(true);
  });
});

describe('errors through the SDK', () => {
  it('a wrong API key throws AuthenticationError', async () => {
    const bad = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'sk-wrong', maxRetries: 0 });
    await expect(bad.completions.create({ model: MODEL, prompt: 'x', max_tokens: 1 })).rejects.toThrow(OpenAI.AuthenticationError);
  });

  it('an unknown model throws NotFoundError; a bad value throws BadRequestError naming the field', async () => {
    await expect(client.completions.create({ model: 'gpt-4', prompt: 'x' })).rejects.toThrow(OpenAI.NotFoundError);
    const err = await client.completions.create({ model: MODEL, prompt: 'x', top_p: 5 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('top_p');
  });
});

describe('graceful shutdown', () => {
  it('lets short requests finish, aborts what outlives the timeout, closes the engine', async () => {
    const short = client.completions.create({ model: MODEL, prompt: 'Hi', max_tokens: 6, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming);
    const longStream = await client.completions.create({
      model: MODEL,
      prompt: 'Write a long story',
      max_tokens: 450,
      ignore_eos: true,
      stream: true,
    } as OpenAI.CompletionCreateParamsStreaming);
    const long = (async () => {
      for await (const _chunk of longStream) {
        // drain
      }
    })();
    await waitFor(() => server.state.inFlight.size === 2, 5000);
    const started = Date.now();
    const stopping = server.shutdown('test shutdown');
    const shortResult = await short;
    expect(shortResult.choices[0]!.finish_reason).toBe('length');
    await expect(long).rejects.toThrow();
    await stopping;
    expect(Date.now() - started).toBeLessThan(5000);
    expect(server.llm.isAlive).toBe(false);
    await expect(fetch(`${server.url}/health`)).rejects.toThrow();
  });
});
