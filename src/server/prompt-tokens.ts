/**
 * Tokenizes a request's prompts before they reach the engine, off the event loop (`LLM.tokenizeAsync` runs on a
 * blocking thread, so a 1 MiB prompt never stalls other requests' streams), and enforces the per-request cap on
 * prompt tokens summed over all prompts (`--max-request-prompt-tokens`): one request may not fill the engine with
 * hundreds of full-context prompts. Token-id prompts pass through unchanged (the engine checks their ids).
 */

import type { Prompt } from '../llm.js';
import { badRequest, toHttpError } from './errors.js';
import type { ServerState } from './state.js';

export async function tokenizePrompts(
  state: ServerState,
  prompts: Prompt[],
  opts: { addSpecialTokens: boolean; param: string },
): Promise<number[][]> {
  const limit = state.options.maxRequestPromptTokens;
  const out: number[][] = [];
  let total = 0;
  for (const prompt of prompts) {
    let ids: number[];
    try {
      ids = typeof prompt === 'string' ? await state.llm.tokenizeAsync(prompt, { addSpecialTokens: opts.addSpecialTokens }) : prompt;
    } catch (err) {
      throw toHttpError(err, { promptParam: opts.param });
    }
    total += ids.length;
    if (total > limit) {
      throw badRequest(
        `the request's prompts have more than ${limit} tokens in all (--max-request-prompt-tokens); send fewer or shorter prompts`,
        opts.param,
        'too_many_prompt_tokens',
      );
    }
    out.push(ids);
  }
  return out;
}
