// Reasoning parsers (<think> family) and the answer pipeline that feeds only the answer part to tool parsing.
import { describe, expect, it } from 'vitest';

import { deepseekR1ReasoningParser, qwen3ReasoningParser } from '../src/reasoning/think-parser.js';
import type { ReasoningParser } from '../src/reasoning/think-parser.js';
import { AnswerStream, parseAnswer } from '../src/tools/answer.js';
import { hermesParser } from '../src/tools/hermes.js';
import type { ChatTool, ToolPlan } from '../src/tools/tool-choice.js';
import { planToolUse, toolOutputSchema } from '../src/tools/tool-choice.js';

function streamed(parser: ReasoningParser, chunks: string[]): { reasoning: string; content: string } {
  const s = parser.stream();
  let reasoning = '';
  let content = '';
  for (const c of [...chunks.map((x) => s.push(x)), s.finish()]) {
    reasoning += c.reasoning ?? '';
    content += c.content;
  }
  return { reasoning, content };
}

const QWEN3 = '<think>\nThe user greets me. I should greet back.\n</think>\n\nHello! How can I help?';
const R1 = 'Okay, 2+2 is 4.\n</think>\n\nThe answer is **4**.';

describe('reasoning parsers', () => {
  it('qwen3 splits a recorded output, complete and streamed by character', () => {
    const want = { reasoning: '\nThe user greets me. I should greet back.\n', content: 'Hello! How can I help?' };
    expect(qwen3ReasoningParser.split(QWEN3)).toEqual(want);
    expect(streamed(qwen3ReasoningParser, [...QWEN3])).toEqual(want);
    expect(streamed(qwen3ReasoningParser, [QWEN3.slice(0, 3), QWEN3.slice(3, 50), QWEN3.slice(50)])).toEqual(want);
  });

  it('qwen3 without <think> is all content', () => {
    expect(qwen3ReasoningParser.split('Just an answer.')).toEqual({ reasoning: null, content: 'Just an answer.' });
    expect(streamed(qwen3ReasoningParser, [...'Just an answer.'])).toEqual({ reasoning: '', content: 'Just an answer.' });
  });

  it('deepseek_r1 starts in reasoning without <think>; no </think> means all reasoning', () => {
    const want = { reasoning: 'Okay, 2+2 is 4.\n', content: 'The answer is **4**.' };
    expect(deepseekR1ReasoningParser.split(R1)).toEqual(want);
    expect(streamed(deepseekR1ReasoningParser, [...R1])).toEqual(want);
    expect(deepseekR1ReasoningParser.split('<think>still thinking')).toEqual({ reasoning: 'still thinking', content: '' });
  });
});

const weather: ChatTool = {
  type: 'function',
  function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } },
};

describe('answers with reasoning and tools', () => {
  const auto: ToolPlan = { mode: 'auto', parser: hermesParser, parallel: true };
  const text = '<think>I need the weather. <tool_call> is how I call.</think>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>';

  it('tool parsing applies to the answer only (a marker inside <think> is not a call)', () => {
    const got = parseAnswer(text, auto, qwen3ReasoningParser);
    expect(got.reasoningContent).toBe('I need the weather. <tool_call> is how I call.');
    expect(got.content).toBeNull();
    expect(got.toolCalls.map((c) => [c.function.name, JSON.parse(c.function.arguments)])).toEqual([['get_weather', { city: 'Oslo' }]]);

    const s = new AnswerStream(auto, qwen3ReasoningParser);
    let reasoning = '';
    let args = '';
    const names: string[] = [];
    for (const d of [...[...text].map((ch) => s.push(ch)), s.finish()]) {
      reasoning += d.reasoningContent;
      for (const t of d.toolCalls) {
        if (t.function.name) names.push(t.function.name);
        args += t.function.arguments;
      }
    }
    expect(reasoning).toBe(got.reasoningContent);
    expect(names).toEqual(['get_weather']);
    expect(JSON.parse(args)).toEqual({ city: 'Oslo' });
    expect(s.callCount).toBe(1);
  });

  it('named and required outputs become calls; parallel_tool_calls false keeps one', () => {
    const named = parseAnswer(' {"city": "Rome"}', { mode: 'named', tool: weather }, null);
    expect(named.toolCalls[0]!.function).toEqual({ name: 'get_weather', arguments: '{"city": "Rome"}' });
    const required: ToolPlan = { mode: 'required', tools: [weather], parallel: false };
    const two = '[{"name": "get_weather", "parameters": {"city": "A"}}, {"name": "get_weather", "parameters": {"city": "B"}}]';
    expect(parseAnswer(two, required, null).toolCalls.map((c) => c.function.arguments)).toEqual(['{"city": "A"}']);
    expect(toolOutputSchema(required)).toMatchObject({ type: 'array', minItems: 1, maxItems: 1 });
  });

  it('planToolUse: defaults, vLLM auto rule, unknown names', () => {
    const server = { enableAutoToolChoice: false, parser: hermesParser };
    expect(planToolUse({}, server)).toEqual({ mode: 'none' });
    expect(() => planToolUse({ tools: [weather] }, server)).toThrow(/--enable-auto-tool-choice/);
    expect(planToolUse({ tools: [weather] }, { ...server, enableAutoToolChoice: true }).mode).toBe('auto');
    expect(() => planToolUse({ tools: [weather], toolChoice: { type: 'function', function: { name: 'nope' } } }, server)).toThrow(/"nope" is not one of/);
    expect(() => planToolUse({ tools: [weather, weather], toolChoice: 'required' }, server)).toThrow(/defined twice/);
    expect(planToolUse({ tools: [weather], toolChoice: 'required' }, server)).toMatchObject({ mode: 'required', parallel: true });
  });
});

describe('tool_choice enforcement reaches the engine as a JSON-Schema constraint', () => {
  it('named -> the parameters schema; required -> an array of {name, parameters}', async () => {
    const { enforceToolChoice } = await import('../src/tools/constraint.js');
    const { parseSamplingParams, toEngineParams } = await import('../src/sampling-params.js');
    const named = toEngineParams(parseSamplingParams(enforceToolChoice({ temperature: 0 }, { mode: 'named', tool: weather })));
    expect(named.structured_outputs).toMatchObject({ json: weather.function.parameters });
    const required = toEngineParams(parseSamplingParams(enforceToolChoice({}, { mode: 'required', tools: [weather], parallel: true })));
    expect(required.structured_outputs).toMatchObject({
      json: { type: 'array', minItems: 1, items: { anyOf: [{ properties: { name: { enum: ['get_weather'] }, parameters: weather.function.parameters } }] } },
    });
    expect(() => enforceToolChoice({ structuredOutputs: { regex: 'a' } }, { mode: 'named', tool: weather })).toThrow(/cannot be combined/);
    expect(enforceToolChoice({ seed: 1 }, { mode: 'none' })).toEqual({ seed: 1 });
  });
});
