// Tool-call parsers on recorded model outputs: non-streamed `extract`, and streamed in every chunking that
// matters (whole text, one character at a time, and random cuts), reassembled as the OpenAI SDK does.
import { describe, expect, it } from 'vitest';

import { hermesParser } from '../src/tools/hermes.js';
import { llama3JsonParser } from '../src/tools/llama3-json.js';
import { mistralParser } from '../src/tools/mistral.js';
import { pythonicParser } from '../src/tools/pythonic.js';
import { toolParserForTemplate } from '../src/tools/registry.js';
import type { ToolCallDelta, ToolParser } from '../src/tools/types.js';

interface Reassembled {
  content: string;
  calls: { id: string; name: string; arguments: string }[];
}

/** Feeds `chunks`, reassembling deltas the way the openai SDK's ChatCompletionStream does, and checks the protocol. */
function streamChunks(parser: ToolParser, chunks: string[]): Reassembled {
  const stream = parser.stream();
  const out: Reassembled = { content: '', calls: [] };
  const apply = (deltas: ToolCallDelta[]) => {
    for (const d of deltas) {
      const call = out.calls[d.index];
      if (!call) {
        // The first delta of a call carries its id, type and name.
        expect(d.index).toBe(out.calls.length);
        expect(d.id).toMatch(/^call_[A-Za-z0-9]{24}$/);
        expect(d.type).toBe('function');
        expect(typeof d.function.name).toBe('string');
        out.calls.push({ id: d.id!, name: d.function.name!, arguments: d.function.arguments });
      } else {
        expect(d.id).toBeUndefined();
        expect(d.function.name).toBeUndefined();
        call.arguments += d.function.arguments;
      }
    }
  };
  for (const chunk of chunks) {
    const r = stream.push(chunk);
    out.content += r.content;
    apply(r.toolCalls);
  }
  const r = stream.finish();
  out.content += r.content;
  apply(r.toolCalls);
  expect(stream.callCount).toBe(out.calls.length);
  return out;
}

function chunkings(text: string): string[][] {
  const seeded = (seed: number) => {
    const parts: string[] = [];
    let i = 0;
    let x = seed;
    while (i < text.length) {
      x = (x * 1103515245 + 12345) % 2147483648;
      const len = 1 + (x % 7);
      parts.push(text.slice(i, i + len));
      i += len;
    }
    return parts;
  };
  return [[text], [...text], seeded(1), seeded(2), seeded(3)];
}

interface Case {
  parser: ToolParser;
  text: string;
  content: string | null;
  calls: { name: string; args: unknown }[];
}

const cases: Record<string, Case> = {
  'hermes, one call with leading text (Qwen2.5)': {
    parser: hermesParser,
    text: 'Let me check the weather.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
    content: 'Let me check the weather.',
    calls: [{ name: 'get_weather', args: { city: 'Paris', unit: 'celsius' } }],
  },
  'hermes, two calls, nested arguments, escapes (Qwen3)': {
    parser: hermesParser,
    text:
      '<tool_call>\n{"name": "search", "arguments": {"q": "a \\"quoted\\" } brace", "filters": {"year": [2023, 2024], "exact": true}}}\n</tool_call>\n' +
      '<tool_call>\n{"arguments": {"n": -1.5e3}, "name": "calc"}\n</tool_call>',
    content: null,
    calls: [
      { name: 'search', args: { q: 'a "quoted" } brace', filters: { year: [2023, 2024], exact: true } } },
      { name: 'calc', args: { n: -1500 } },
    ],
  },
  'hermes, no call': {
    parser: hermesParser,
    text: 'The answer is 42. A <tool_call-like> word is not a call.',
    content: 'The answer is 42. A <tool_call-like> word is not a call.',
    calls: [],
  },
  'llama3_json, python_tag and two calls separated by ;': {
    parser: llama3JsonParser,
    text: '<|python_tag|>{"name": "get_time", "parameters": {"zone": "CET"}}; {"name": "get_date", "parameters": {}}',
    content: null,
    calls: [
      { name: 'get_time', args: { zone: 'CET' } },
      { name: 'get_date', args: {} },
    ],
  },
  'llama3_json, bare JSON object': {
    parser: llama3JsonParser,
    text: ' {"name": "lookup", "parameters": {"id": 7}}',
    content: null,
    calls: [{ name: 'lookup', args: { id: 7 } }],
  },
  'llama3_json, plain answer': {
    parser: llama3JsonParser,
    text: 'Paris is the capital of France.',
    content: 'Paris is the capital of France.',
    calls: [],
  },
  'mistral, JSON array after [TOOL_CALLS]': {
    parser: mistralParser,
    text: '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Lyon"}}, {"name": "get_weather", "arguments": {"city": "Nice"}}]',
    content: null,
    calls: [
      { name: 'get_weather', args: { city: 'Lyon' } },
      { name: 'get_weather', args: { city: 'Nice' } },
    ],
  },
  'mistral v11, name[ARGS]{...} twice': {
    parser: mistralParser,
    text: 'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Lyon"}[TOOL_CALLS]get_time[ARGS]{"zone": "CET"}',
    content: 'Sure.',
    calls: [
      { name: 'get_weather', args: { city: 'Lyon' } },
      { name: 'get_time', args: { zone: 'CET' } },
    ],
  },
  'pythonic, two calls with Python literals (Llama 3.2)': {
    parser: pythonicParser,
    text: "[get_weather(city='San Francisco', metric=True, days=3), record(tags=['a', \"b\"], extra={'k': None, 'x': (1, 2.5)})]",
    content: null,
    calls: [
      { name: 'get_weather', args: { city: 'San Francisco', metric: true, days: 3 } },
      { name: 'record', args: { tags: ['a', 'b'], extra: { k: null, x: [1, 2.5] } } },
    ],
  },
  'pythonic, inside python_start/python_end (Llama 4)': {
    parser: pythonicParser,
    text: '<|python_start|>[ping()]<|python_end|>',
    content: null,
    calls: [{ name: 'ping', args: {} }],
  },
  'pythonic, plain answer': {
    parser: pythonicParser,
    text: 'No tools needed: 2 + 2 = 4.',
    content: 'No tools needed: 2 + 2 = 4.',
    calls: [],
  },
};

describe('tool-call parsers on recorded outputs', () => {
  for (const [title, c] of Object.entries(cases)) {
    it(`${title}: extract`, () => {
      const got = c.parser.extract(c.text);
      expect(got.content).toBe(c.content);
      expect(got.toolCalls.map((t) => ({ name: t.function.name, args: JSON.parse(t.function.arguments) }))).toEqual(c.calls);
      for (const t of got.toolCalls) expect(t.id).toMatch(/^call_/);
    });
    it(`${title}: streamed in every chunking equals extract`, () => {
      for (const chunks of chunkings(c.text)) {
        const got = streamChunks(c.parser, chunks);
        expect(got.calls.map((t) => ({ name: t.name, args: JSON.parse(t.arguments) }))).toEqual(c.calls);
        expect(got.content.trim()).toBe(c.content ?? '');
        expect(new Set(got.calls.map((t) => t.id)).size).toBe(got.calls.length);
      }
    });
  }

  it('the name is announced before the arguments finish (argument fragments stream)', () => {
    const stream = hermesParser.stream();
    expect(stream.push('<tool_call>\n{"name": "get_wea').toolCalls).toEqual([]);
    const named = stream.push('ther", "arguments": {"ci');
    expect(named.toolCalls).toHaveLength(1);
    expect(named.toolCalls[0]!.function).toEqual({ name: 'get_weather', arguments: '{"ci' });
    expect(stream.push('ty": "Paris"}}\n</tool_').toolCalls).toEqual([{ index: 0, function: { arguments: 'ty": "Paris"}' } }]);
    expect(stream.push('call>').toolCalls).toEqual([]);
  });

  it('a marker split across chunks is never shown as content', () => {
    const stream = mistralParser.stream();
    expect(stream.push('Ok [TOOL').content).toBe('Ok ');
    expect(stream.push('_CALLS][{"name": "f", "arguments": {}}]').content).toBe('');
    expect(stream.callCount).toBe(1);
  });

  it('an unparsable call region falls back to content (extract and stream)', () => {
    const text = '<tool_call>\nnot json at all\n</tool_call>';
    expect(hermesParser.extract(text)).toEqual({ content: text, toolCalls: [] });
    expect(streamChunks(hermesParser, [...text]).content).toBe(text);
    const cut = '<tool_call>\n{"name": "f", "arguments": {"a": 1';
    expect(hermesParser.extract(cut)).toEqual({ content: cut, toolCalls: [] });
  });

  it('the default parser follows the chat template', () => {
    expect(toolParserForTemplate('{% for tool in tools %}<tool_call>{% endfor %}')?.name).toBe('hermes');
    expect(toolParserForTemplate('[AVAILABLE_TOOLS]...[TOOL_CALLS]')?.name).toBe('mistral');
    expect(toolParserForTemplate('<|start_header_id|>ipython<|end_header_id|>')?.name).toBe('llama3_json');
    expect(toolParserForTemplate('<|python_start|>')?.name).toBe('pythonic');
    expect(toolParserForTemplate('<|im_start|>{{ m.content }}')).toBeUndefined();
  });
});

describe('serve flags', () => {
  it('--enable-auto-tool-choice, --tool-call-parser and --reasoning-parser (vLLM names), bad names are usage errors', async () => {
    const { parseServeArgs } = await import('../src/server/options.js');
    const opts = parseServeArgs(['--enable-auto-tool-choice', '--tool-call-parser', 'mistral', '--reasoning-parser', 'deepseek_r1'])!;
    expect(opts).toMatchObject({ enableAutoToolChoice: true, toolCallParser: 'mistral', reasoningParser: 'deepseek_r1' });
    expect(parseServeArgs([])).toMatchObject({ enableAutoToolChoice: false, toolCallParser: null, reasoningParser: null });
    expect(() => parseServeArgs(['--tool-call-parser', 'nope'])).toThrow(/--tool-call-parser must be one of hermes, llama3_json, mistral, pythonic/);
    expect(() => parseServeArgs(['--reasoning-parser', 'nope'])).toThrow(/--reasoning-parser must be one of qwen3, deepseek_r1/);
  });
});
