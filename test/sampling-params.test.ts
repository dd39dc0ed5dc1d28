import { describe, expect, it } from 'vitest';

import { ValidationError, parseSamplingParams, toEngineParams } from '../src/index.js';
import type { SamplingParamsInput } from '../src/index.js';

describe('sampling params validation (no engine)', () => {
  const bad: [SamplingParamsInput, string][] = [
    [{ temperature: -0.5 }, 'temperature'],
    [{ topP: 0 }, 'topP'],
    [{ topP: 1.5 }, 'topP'],
    [{ n: 0 }, 'n'],
    [{ maxTokens: 0 }, 'maxTokens'],
    [{ logprobs: 21 }, 'logprobs'],
    [{ promptLogprobs: 21 }, 'promptLogprobs'],
    [{ topK: -2 }, 'topK'],
    [{ minP: 1.1 }, 'minP'],
    [{ repetitionPenalty: 0 }, 'repetitionPenalty'],
    [{ frequencyPenalty: 2.5 }, 'frequencyPenalty'],
    [{ presencePenalty: -3 }, 'presencePenalty'],
    [{ n: 1.5 }, 'n'],
    [{ temperature: Number.NaN }, 'temperature'],
    [{ stop: [''] }, 'stop.0'],
    [{ stopTokenIds: [-1] }, 'stopTokenIds.0'],
    [{ minTokens: 10, maxTokens: 5 }, 'minTokens'],
    [{ logitBias: { abc: 1 } }, 'logitBias.abc'],
    [{ n: 3, bestOf: 2 }, 'bestOf'],
    [{ bestOf: 0 }, 'bestOf'],
  ];
  it.each(bad)('rejects %j naming %s', (params, field) => {
    let caught: unknown;
    try {
      parseSamplingParams(params);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ValidationError);
    const err = caught as ValidationError;
    expect(err.code).toBe('invalid_param');
    expect(err.param).toBe(field);
    expect(err.message).toContain(`\`${field}\``);
  });

  it('rejects unknown fields (a snake_case typo is not silently ignored)', () => {
    expect(() => parseSamplingParams({ top_p: 0.5 } as unknown as SamplingParamsInput)).toThrow(/unknown field `top_p`/);
  });

  it('accepts the boundaries', () => {
    expect(() =>
      parseSamplingParams({ temperature: 0, topP: 1, n: 1, maxTokens: 1, logprobs: 20, promptLogprobs: 0, topK: -1 }),
    ).not.toThrow();
    expect(() => parseSamplingParams({ maxTokens: null, logprobs: null })).not.toThrow();
    expect(toEngineParams(parseSamplingParams({ n: 2, bestOf: 2 }))).toEqual({ n: 2, best_of: 2 });
  });

  it('sends only the fields that were set, in snake_case', () => {
    expect(toEngineParams(parseSamplingParams(undefined))).toEqual({});
    expect(
      toEngineParams(
        parseSamplingParams({
          temperature: 0.7,
          topP: 0.9,
          maxTokens: null,
          stop: 'END',
          logitBias: { '42': -100, '7': 2.5 },
          stopTokenIds: [2],
          includeStopStrInOutput: true,
          skipSpecialTokens: false,
          seed: 123,
        }),
      ),
    ).toEqual({
      temperature: 0.7,
      top_p: 0.9,
      max_tokens: null,
      stop: ['END'],
      logit_bias: [
        [7, 2.5],
        [42, -100],
      ],
      stop_token_ids: [2],
      include_stop_str_in_output: true,
      skip_special_tokens: false,
      seed: 123,
    });
  });
});
