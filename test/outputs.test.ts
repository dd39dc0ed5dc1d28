import { describe, expect, it } from 'vitest';

import { type EngineDelta, OutputAccumulator, streamDeltas } from '../src/outputs.js';
import { rng } from './helpers.js';

function delta(partial: Partial<EngineDelta>): EngineDelta {
  return { requestId: 'r', promptTokenIds: null, promptLogprobs: null, outputs: [], finished: false, metrics: null, ...partial };
}

describe('OutputAccumulator', () => {
  it('folds randomly split deltas of two samples back into whole outputs', () => {
    const next = rng(7);
    for (let trial = 0; trial < 50; trial++) {
      const texts = ['hello wörld, 你好', 'another sample'];
      const ids = [
        [1, 2, 3, 4, 5, 6],
        [9, 8, 7],
      ];
      const acc = new OutputAccumulator('r', 'p');
      acc.add(delta({ promptTokenIds: [10, 11] }));
      const pos = [0, 0];
      const tpos = [0, 0];
      while (pos.some((p, i) => p < ids[i]!.length) || tpos.some((p, i) => p < texts[i]!.length)) {
        const outputs = [];
        for (const i of [0, 1]) {
          if (next() < 0.3) continue;
          const take = Math.floor(next() * 3);
          const ttake = Math.floor(next() * 5);
          const t = [...texts[i]!];
          outputs.push({
            index: i,
            text: t.slice(tpos[i], tpos[i]! + ttake).join(''),
            tokenIds: ids[i]!.slice(pos[i], pos[i]! + take),
            logprobs: null,
            cumulativeLogprob: -pos[i]!,
            finishReason: null,
            stopReason: null,
          });
          pos[i] = Math.min(ids[i]!.length, pos[i]! + take);
          tpos[i] = Math.min(t.length, tpos[i]! + ttake);
        }
        acc.add(delta({ outputs }));
      }
      acc.add(
        delta({
          outputs: [1, 0].map((i) => ({
            index: i,
            text: '',
            tokenIds: [],
            logprobs: null,
            cumulativeLogprob: -1.5,
            finishReason: i === 0 ? 'stop' : 'length',
            stopReason: i === 0 ? 'END' : null,
          })),
          finished: true,
        }),
      );
      const out = acc.result();
      expect(out.finished).toBe(true);
      expect(out.promptTokenIds).toEqual([10, 11]);
      expect(out.outputs.map((o) => o.index)).toEqual([0, 1]);
      expect(out.outputs.map((o) => o.text)).toEqual(texts);
      expect(out.outputs.map((o) => o.tokenIds)).toEqual(ids);
      expect(out.outputs[0]!.finishReason).toBe('stop');
      expect(out.outputs[0]!.stopReason).toBe('END');
      expect(out.outputs[1]!.finishReason).toBe('length');
      expect(out.outputs[1]!.cumulativeLogprob).toBe(-1.5);
    }
  });

  it('streamDeltas skips empty samples and marks the last chunk finished', () => {
    const chunks = streamDeltas(
      delta({
        outputs: [
          { index: 0, text: '', tokenIds: [], logprobs: null, cumulativeLogprob: 0, finishReason: null, stopReason: null },
          { index: 1, text: 'x', tokenIds: [5], logprobs: null, cumulativeLogprob: -1, finishReason: 'length', stopReason: null },
        ],
        finished: true,
      }),
    );
    expect(chunks).toHaveLength(1);
    expect(chunks[0]).toMatchObject({ index: 1, text: 'x', tokenIds: [5], finishReason: 'length', finished: true });
  });
});
