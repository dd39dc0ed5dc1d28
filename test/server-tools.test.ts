/**
 * Tool calling and reasoning on /v1/chat/completions through the official `openai` SDK on a real socket, plus the
 * TS API: a forced call whose arguments validate (named function and "required", constrained by JSON Schema so
 * even the 135M default model complies), a streamed call reassembled by the SDK, `runTools` driving a two-step
 * conversation (call, tool result round-tripped through the template, final answer), reasoning_content on a
 * server with --reasoning-parser, and the 400s for bad tools / tool_choice.
 */

import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { LLM } from '../src/index.js';
import { createApp } from '../src/server/app.js';
import { detectToolParser } from '../src/tools/detect.js';
import { type RunningServer, startServer } from '../src/server/serve.js';
import { TEST_ENGINE } from './helpers.js';

const MODEL = 'smol';
let server: RunningServer;
let client: OpenAI;
let llm: LLM;

const weatherTool = {
  type: 'function' as const,
  function: {
    name: 'get_weather',
    description: 'Current weather in a city',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string', maxLength: 20 }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
      required: ['city', 'unit'],
      additionalProperties: false,
    },
  },
};
const timeTool = {
  type: 'function' as const,
  function: {
    name: 'get_time',
    parameters: { type: 'object', properties: { zone: { type: 'string', enum: ['UTC', 'CET'] } }, required: ['zone'], additionalProperties: false },
  },
};

/** The schemas' own rules, checked by hand (the schemas are small; no validator dependency needed). */
function checkWeatherArgs(json: string): void {
  const args = JSON.parse(json) as Record<string, unknown>;
  expect(Object.keys(args).sort()).toEqual(['city', 'unit']);
  expect(typeof args.city).toBe('string');
  expect((args.city as string).length).toBeLessThanOrEqual(20);
  expect(['celsius', 'fahrenheit']).toContain(args.unit);
}

const question = [{ role: 'user' as const, content: 'What is the weather in Paris?' }];

beforeAll(async () => {
  server = await startServer({
    port: 0,
    engine: { ...TEST_ENGINE, maxNumSeqs: 4 },
    servedModelName: [MODEL],
    enableAutoToolChoice: true,
    log: () => {},
  });
  llm = server.llm;
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

afterAll(async () => {
  await server?.shutdown('test over');
});

describe('forced tool calls (constrained)', () => {
  it('a named function: one call whose arguments validate, finish_reason tool_calls', async () => {
    const res = await client.chat.completions.create({
      model: MODEL,
      messages: question,
      tools: [weatherTool, timeTool],
      tool_choice: { type: 'function', function: { name: 'get_weather' } },
      temperature: 0,
      max_completion_tokens: 64,
    });
    const choice = res.choices[0]!;
    expect(choice.finish_reason).toBe('tool_calls');
    expect(choice.message.tool_calls).toHaveLength(1);
    const call = choice.message.tool_calls![0]!;
    expect(call.type).toBe('function');
    expect(call.id).toMatch(/^call_/);
    if (call.type !== 'function') throw new Error('not a function call');
    expect(call.function.name).toBe('get_weather');
    checkWeatherArgs(call.function.arguments);
  });

  it('"required": calls among the tools, each validating against its schema', async () => {
    const res = await client.chat.completions.create({
      model: MODEL,
      messages: question,
      tools: [weatherTool, timeTool],
      tool_choice: 'required',
      parallel_tool_calls: false,
      temperature: 0,
      max_completion_tokens: 96,
    });
    const choice = res.choices[0]!;
    expect(choice.finish_reason).toBe('tool_calls');
    expect(choice.message.tool_calls).toHaveLength(1);
    const call = choice.message.tool_calls![0]!;
    if (call.type !== 'function') throw new Error('not a function call');
    if (call.function.name === 'get_weather') checkWeatherArgs(call.function.arguments);
    else {
      expect(call.function.name).toBe('get_time');
      expect(['UTC', 'CET']).toContain((JSON.parse(call.function.arguments) as { zone: string }).zone);
    }
  });

  it('streamed: the SDK reassembles the call from tool_calls deltas', async () => {
    const params = {
      model: MODEL,
      messages: question,
      tools: [weatherTool],
      tool_choice: { type: 'function' as const, function: { name: 'get_weather' } },
      temperature: 0,
      max_completion_tokens: 64,
    };
    const stream = client.chat.completions.stream(params);
    let deltas = 0;
    stream.on('chunk', (chunk) => {
      if (chunk.choices[0]?.delta.tool_calls) deltas++;
    });
    const final = await stream.finalChatCompletion();
    expect(deltas).toBeGreaterThan(1); // id + name first, then argument fragments
    const call = final.choices[0]!.message.tool_calls![0]!;
    if (call.type !== 'function') throw new Error('not a function call');
    expect(call.function.name).toBe('get_weather');
    checkWeatherArgs(call.function.arguments);
    expect(final.choices[0]!.finish_reason).toBe('tool_calls');
    // Same greedy output as the non-streamed request.
    const plain = await client.chat.completions.create(params);
    const plainCall = plain.choices[0]!.message.tool_calls![0]!;
    if (plainCall.type !== 'function') throw new Error('not a function call');
    expect(JSON.parse(call.function.arguments)).toEqual(JSON.parse(plainCall.function.arguments));
  });

  it('runTools: a forced call runs the function, then the tool result goes back for a final answer', async () => {
    const seen: unknown[] = [];
    const tool = {
      type: 'function' as const,
      function: {
        name: weatherTool.function.name,
        description: weatherTool.function.description,
        parameters: weatherTool.function.parameters,
        parse: JSON.parse,
        function: (args: unknown) => {
          seen.push(args);
          return { temperature: 21, sky: 'clear' };
        },
      },
    };
    // Step 1: the named tool_choice forces the call; the SDK runs the function and appends its result.
    const first = client.chat.completions.runTools({
      model: MODEL,
      messages: question,
      tools: [tool],
      tool_choice: { type: 'function', function: { name: 'get_weather' } },
      temperature: 0,
      max_completion_tokens: 64,
    });
    await first.done();
    expect(seen).toHaveLength(1);
    checkWeatherArgs(JSON.stringify(seen[0]));
    const history = first.messages;
    expect(history.map((m) => m.role)).toEqual(['user', 'assistant', 'tool']);
    // Step 2: the conversation, with the assistant's tool_calls and the tool message, gets a text answer.
    const second = client.chat.completions.runTools({
      model: MODEL,
      messages: history,
      tools: [tool],
      tool_choice: 'none',
      temperature: 0,
      // The SDK refuses a completion cut by the length limit: end the answer at its first sentence instead.
      stop: ['.', '\n'],
      max_completion_tokens: 200,
    });
    const answer = await second.finalContent();
    expect(typeof answer).toBe('string');
    expect(answer!.length).toBeGreaterThan(0);
    expect(seen).toHaveLength(1); // no further call
  });

  it('TS API: llm.chat with tools returns parsed calls', async () => {
    const out = await llm.chat(question, { temperature: 0, maxTokens: 64 }, { tools: [weatherTool], toolChoice: { type: 'function', function: { name: 'get_weather' } } });
    const sample = out.outputs[0]!;
    expect(sample.toolCalls).toHaveLength(1);
    expect(sample.toolCalls![0]!.function.name).toBe('get_weather');
    checkWeatherArgs(sample.toolCalls![0]!.function.arguments);
  });

  it('TS API: llm.chatStream with tools streams tool-call deltas that reassemble into the call', async () => {
    const opts = { tools: [weatherTool, timeTool], toolChoice: 'required' as const, parallelToolCalls: false };
    const params = { temperature: 0, maxTokens: 80 };
    const calls: { id?: string; name?: string; arguments: string }[] = [];
    let text = '';
    let fragments = 0;
    let content = '';
    for await (const d of llm.chatStream(question, params, opts)) {
      text += d.text;
      content += d.content ?? '';
      for (const t of d.toolCalls ?? []) {
        fragments++;
        const call = (calls[t.index] ??= { arguments: '' });
        // OpenAI's streaming shape: id and name on a call's first fragment only, then argument pieces.
        if (t.id !== undefined) {
          expect(call.id).toBeUndefined();
          call.id = t.id;
        }
        if (t.function.name !== undefined) call.name = t.function.name;
        call.arguments += t.function.arguments;
      }
    }
    expect(calls).toHaveLength(1);
    expect(calls[0]!.id).toMatch(/\S/);
    expect(['get_weather', 'get_time']).toContain(calls[0]!.name);
    if (calls[0]!.name === 'get_weather') checkWeatherArgs(calls[0]!.arguments);
    else expect(['UTC', 'CET']).toContain((JSON.parse(calls[0]!.arguments) as { zone: string }).zone);
    expect(fragments).toBeGreaterThan(1); // streamed in pieces, not once at the end
    expect(content).toBe(''); // a required call is all the answer
    // The same call as llm.chat parses out of the same (greedy) output.
    const whole = await llm.chat(question, params, opts);
    expect(whole.outputs[0]!.text).toBe(text);
    const parsed = whole.outputs[0]!.toolCalls![0]!.function;
    expect(parsed.name).toBe(calls[0]!.name);
    expect(JSON.parse(parsed.arguments)).toEqual(JSON.parse(calls[0]!.arguments));
  });

  it('TS API: llm.chatStream without tools is the plain stream', async () => {
    let sawParsed = false;
    for await (const d of llm.chatStream(question, { temperature: 0, maxTokens: 4 })) {
      if ('toolCalls' in d || 'content' in d) sawParsed = true;
    }
    expect(sawParsed).toBe(false);
  });
});

describe('auto tool choice and templates', () => {
  it('"auto" on a server with --enable-auto-tool-choice answers; no call means finish_reason stop', async () => {
    const res = await client.chat.completions.create({ model: MODEL, messages: question, tools: [weatherTool], temperature: 0, max_completion_tokens: 8 });
    const choice = res.choices[0]!;
    expect(choice.message.tool_calls ?? []).toHaveLength(0);
    expect(typeof choice.message.content).toBe('string');
    expect(['stop', 'length']).toContain(choice.finish_reason);
  });

  it('the template gets `tools`, and assistant tool_calls with parsed arguments', () => {
    const template =
      '{% for t in tools %}[{{ t.function.name }}]{% endfor %}' +
      '{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}<{{ c.function.name }}:{{ c.function.arguments.city }}>{% endfor %}{% endif %}' +
      '{% if m.role == "tool" %}({{ m.tool_call_id }}={{ m.content }}){% endif %}{% endfor %}';
    const rendered = llm.applyChatTemplate(
      [
        { role: 'user', content: 'q' },
        { role: 'assistant', content: '', tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Oslo"}' } }] },
        { role: 'tool', tool_call_id: 'call_1', content: 'sunny' },
      ],
      { chatTemplate: template, tools: [weatherTool, timeTool] },
    );
    expect(rendered).toBe('[get_weather][get_time]<get_weather:Oslo>(call_1=sunny)');
  });

  it('the default parser is the format the chat template writes for past calls', () => {
    const detect = (template: string) =>
      detectToolParser((messages, extra) => llm.applyChatTemplate(messages as never, { chatTemplate: template, chatTemplateKwargs: extra })).name;
    const each = (body: string) => `{% for m in messages %}{{ m.role }}:{% if m.tool_calls %}{% for c in m.tool_calls %}${body}{% endfor %}{% endif %}{% endfor %}`;
    expect(detect(each('<tool_call>{{ c.function | tojson }}</tool_call>'))).toBe('hermes');
    expect(detect(each('[TOOL_CALLS][{{ c.function | tojson }}]'))).toBe('mistral');
    expect(detect('{% for m in messages %}{% if m.role == "tool" %}<|start_header_id|>ipython<|end_header_id|>{% endif %}{% endfor %}')).toBe('llama3_json');
    expect(detect(each('<|python_start|>[{{ c.function.name }}()]<|python_end|>'))).toBe('pythonic');
    // The default model's template shows no tool format; a template that refuses the probe falls back too.
    expect(detect('{{ raise_exception("no tools here") }}')).toBe('hermes');
  });
});

describe('reasoning', () => {
  it('--reasoning-parser deepseek_r1: an answer without </think> is all reasoning_content, streamed the same', async () => {
    const plainApp = createApp(llm, { disableLogRequests: true }).app;
    const reasoningApp = createApp(llm, { disableLogRequests: true, reasoningParser: 'deepseek_r1' }).app;
    const body = { messages: question, temperature: 0, max_tokens: 12 };
    const post = (app: typeof plainApp, extra: object = {}) =>
      app.request('/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, ...extra }) });
    const plain = (await (await post(plainApp)).json()) as { choices: { message: { content: string } }[] };
    const split = (await (await post(reasoningApp)).json()) as { choices: { message: { content: string; reasoning_content: string } }[] };
    const text = plain.choices[0]!.message.content;
    expect(text.length).toBeGreaterThan(0);
    expect(split.choices[0]!.message).toMatchObject({ reasoning_content: text, content: '' });
    const sse = await (await post(reasoningApp, { stream: true })).text();
    let reasoning = '';
    let content = '';
    for (const line of sse.split('\n')) {
      if (!line.startsWith('data: {')) continue;
      const delta = (JSON.parse(line.slice(6)) as { choices: { delta: { reasoning_content?: string; content?: string } }[] }).choices[0]?.delta;
      reasoning += delta?.reasoning_content ?? '';
      content += delta?.content ?? '';
    }
    expect(reasoning).toBe(text);
    expect(content).toBe('');
  });
});

describe('bad tools and tool_choice are 400s naming the field', () => {
  const expect400 = async (extra: object, param: string, message?: RegExp) => {
    const app = createApp(llm, { disableLogRequests: true }).app;
    const res = await app.request('/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages: question, max_tokens: 1, ...extra }),
    });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { error: { param: string; message: string; type: string } };
    expect(body.error.param).toBe(param);
    expect(body.error.type).toBe('invalid_request_error');
    if (message) expect(body.error.message).toMatch(message);
  };

  it('tools', async () => {
    await expect400({ tools: [{ type: 'retrieval' }] }, 'tools[0].type');
    await expect400({ tools: [{ type: 'function', function: { name: 'bad name!' } }], tool_choice: 'required' }, 'tools[0].function.name');
    await expect400({ tools: [{ type: 'function', function: { name: 'f', parameters: 'x' } }], tool_choice: 'required' }, 'tools[0].function.parameters');
    await expect400({ tools: [weatherTool, weatherTool], tool_choice: 'required' }, 'tools[1].function.name', /defined twice/);
  });

  it('tool_choice', async () => {
    await expect400({ tools: [weatherTool] }, 'tool_choice', /--enable-auto-tool-choice/);
    await expect400({ tools: [weatherTool], tool_choice: 'sometimes' }, 'tool_choice');
    await expect400({ tools: [weatherTool], tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice', /"nope" is not one of/);
    await expect400({ tool_choice: 'required' }, 'tool_choice', /needs `tools`/);
  });
});
