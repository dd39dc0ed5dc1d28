/**
 * POST /v1/completions with vLLM's semantics: one engine request per prompt (string, strings, token ids, arrays of
 * token ids), choices indexed `prompt * n + sample`; `echo` prepends the prompt (with prompt log-probs when
 * `logprobs` is set); `logprobs` in OpenAI's completions format; `max_tokens` defaults to 16. Streams as SSE with
 * `include_usage` support; a client disconnect aborts the engine requests at once. `response_format`,
 * `structured_outputs` and the `guided_*` fields constrain the output as on the chat route. `return_token_ids`
 * (always on without a tokenizer, `--skip-tokenizer-init`) adds `token_ids` / `prompt_token_ids` (token-ids.ts).
 */

import { Hono } from 'hono';

import type { Prompt } from '../../llm.js';
import type { FinishReason, PositionLogprobs } from '../../outputs.js';
import { badRequest, notSupported } from '../errors.js';
import { MAX_PROMPTS_PER_REQUEST } from '../limits.js';
import { startGeneration, type JobChunk } from '../generation.js';
import { CompletionLogprobsBuilder, type CompletionLogprobs, concatCompletionLogprobs, vllmPromptLogprobs } from '../logprobs.js';
import { tokenizePrompts } from '../prompt-tokens.js';
import { readJson, resolveModel, validate } from '../request.js';
import { type CompletionRequest, completionRequestSchema } from '../schemas/completions.js';
import { samplingParamsFrom } from '../schemas/common.js';
import { sseResponse } from '../sse.js';
import type { ServerState } from '../state.js';
import type { AppEnv } from '../app-env.js';
import { constraintFromRequest } from '../structured-outputs.js';
import { refuseUnsupportedFields } from '../unsupported-fields.js';
import { namedLogprobs, refuseTextFeatures, returnsTokenIds } from '../token-ids.js';

export const DEFAULT_COMPLETION_MAX_TOKENS = 16;

/**
 * The prompt-count cap, checked before the schema: zod reports a failed union of prompt shapes with one generic
 * message, which would hide why a long list was refused. (A flat array of numbers is ONE token-id prompt.)
 */
function refuseTooManyPrompts(raw: unknown): void {
  const prompt = (raw as { prompt?: unknown } | null)?.prompt;
  if (Array.isArray(prompt) && prompt.length > MAX_PROMPTS_PER_REQUEST && typeof prompt[0] !== 'number') {
    throw badRequest(`invalid value for \`prompt\`: must have at most ${MAX_PROMPTS_PER_REQUEST} prompts, got ${prompt.length}`, 'prompt');
  }
}

function promptsOf(prompt: CompletionRequest['prompt']): Prompt[] {
  if (typeof prompt === 'string') return [prompt];
  if (prompt.every((p) => typeof p === 'number')) return [prompt as number[]];
  return prompt as Prompt[];
}

interface ChoiceState {
  index: number;
  text: string;
  tokenIds: number[];
  tokens: number;
  logprobs: CompletionLogprobs | null;
  builder: CompletionLogprobsBuilder;
  started: boolean;
  finishReason: FinishReason | null;
  stopReason: string | number | null;
}

interface JobState {
  promptText: string | null;
  promptTokenIds: number[] | null;
  promptLogprobs: (PositionLogprobs | null)[] | null;
}

export function completionsRoute(state: ServerState): Hono<AppEnv> {
  const route = new Hono<AppEnv>();
  route.post('/v1/completions', async (c) => {
    const raw = await readJson(c);
    refuseTooManyPrompts(raw);
    const body = validate(completionRequestSchema, raw);
    refuseUnsupportedFields(raw, 'completions');
    const model = resolveModel(state, body.model);
    if (body.suffix) throw notSupported('suffix', '');
    const n = body.n ?? 1;
    // OpenAI: best_of candidates are generated server-side and the best n returned; results cannot be streamed.
    const bestOf = body.best_of ?? undefined;
    if (bestOf !== undefined && bestOf < n) throw badRequest(`\`best_of\` must be >= \`n\` (${n}), got ${bestOf}`, 'best_of');
    if (bestOf !== undefined && bestOf > n && body.stream) throw badRequest('`best_of` greater than `n` cannot be streamed', 'best_of');
    // vLLM: with use_beam_search, `n` is the beam width and all n beams come back.
    if (body.use_beam_search && bestOf !== undefined && bestOf !== n) throw badRequest('`best_of` cannot be combined with `use_beam_search` (`n` is the beam width)', 'best_of');

    const prompts = promptsOf(body.prompt);
    const constraint = constraintFromRequest(raw as Record<string, unknown>);
    refuseTextFeatures(state, body, constraint !== null && constraint !== undefined);
    const withTokenIds = returnsTokenIds(state, body.return_token_ids);
    const params = samplingParamsFrom(body);
    if (bestOf !== undefined) params.bestOf = bestOf;
    if (constraint) params.structuredOutputs = constraint.structuredOutputs;
    params.maxTokens = body.max_tokens === undefined ? DEFAULT_COMPLETION_MAX_TOKENS : body.max_tokens;
    const topCount = body.logprobs ?? 0;
    const wantLogprobs = body.logprobs !== undefined && body.logprobs !== null;
    if (wantLogprobs) params.logprobs = topCount;
    const echo = body.echo ?? false;
    if (echo && wantLogprobs) params.promptLogprobs = Math.max(params.promptLogprobs ?? 0, topCount);

    const requestId = c.get('requestId');
    const id = `cmpl-${requestId}`;
    const created = Math.floor(Date.now() / 1000);
    const llm = state.llm;
    const promptIds = await tokenizePrompts(state, prompts, { addSpecialTokens: true, param: 'prompt' });
    const cacheSalt = body.cache_salt ?? undefined;
    const gen = await startGeneration(
      state,
      promptIds.map((prompt) => ({ prompt, params, addSpecialTokens: true, cacheSalt })),
      { requestId, signal: c.req.raw.signal, promptParam: 'prompt', renames: constraint?.renames },
    );

    const jobs: JobState[] = prompts.map((p) => ({
      promptText: typeof p === 'string' ? p : null,
      promptTokenIds: null,
      promptLogprobs: null,
    }));
    const choices = new Map<number, ChoiceState>();
    const choiceFor = (job: number, sample: number): ChoiceState => {
      const index = job * n + sample;
      let ch = choices.get(index);
      if (!ch) {
        ch = { index, text: '', tokenIds: [], tokens: 0, logprobs: null, builder: new CompletionLogprobsBuilder(), started: false, finishReason: null, stopReason: null };
        choices.set(index, ch);
      }
      return ch;
    };
    const promptTextOf = (job: JobState): string =>
      (job.promptText ??= llm.detokenize(job.promptTokenIds ?? [], { skipSpecialTokens: false }));
    /** The new text and log-probs of one chunk, with the echoed prompt in front of a choice's first chunk. */
    const piece = (chunk: JobChunk): { ch: ChoiceState; first: boolean; text: string; logprobs: CompletionLogprobs | null } => {
      const job = jobs[chunk.job]!;
      const d = chunk.delta;
      if (d.promptTokenIds) job.promptTokenIds = d.promptTokenIds;
      if (d.promptLogprobs) job.promptLogprobs = d.promptLogprobs;
      const ch = choiceFor(chunk.job, d.index);
      const first = !ch.started;
      let text = d.text;
      let logprobs: CompletionLogprobs | null = null;
      if (!ch.started && echo) {
        const promptText = promptTextOf(job);
        text = promptText + text;
        if (wantLogprobs) {
          const ids = job.promptTokenIds ?? [];
          const positions = namedLogprobs(state, job.promptLogprobs ?? ids.map(() => null));
          logprobs = ch.builder.build(positions, (i) => llm.detokenize([ids[i]!], { skipSpecialTokens: false }), topCount);
        }
      }
      ch.started = true;
      if (wantLogprobs) {
        const fresh = ch.builder.build(namedLogprobs(state, d.logprobs ?? []), () => '', topCount);
        logprobs = logprobs ? concatCompletionLogprobs(logprobs, fresh) : fresh;
      }
      ch.tokens += d.tokenIds.length;
      if (withTokenIds) ch.tokenIds.push(...d.tokenIds);
      if (d.finishReason !== null) ch.finishReason = d.finishReason;
      if (d.stopReason !== null) ch.stopReason = d.stopReason;
      return { ch, first, text, logprobs };
    };
    const usage = () => {
      const promptTokens = jobs.reduce((sum, j) => sum + (j.promptTokenIds?.length ?? 0), 0);
      const completionTokens = [...choices.values()].reduce((sum, ch) => sum + ch.tokens, 0);
      return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
    };

    if (body.stream) {
      const includeUsage = body.stream_options?.include_usage ?? false;
      return sseResponse(
        c,
        () => gen.abort(),
        async (out) => {
          for await (const chunk of gen.chunks) {
            const { ch, first, text, logprobs } = piece(chunk);
            const choice: Record<string, unknown> = {
              index: ch.index,
              text,
              logprobs: wantLogprobs ? logprobs : null,
              finish_reason: chunk.delta.finishReason,
              stop_reason: chunk.delta.finishReason === null ? null : ch.stopReason,
            };
            if (withTokenIds) {
              if (first) choice.prompt_token_ids = jobs[chunk.job]!.promptTokenIds;
              choice.token_ids = chunk.delta.tokenIds;
            }
            const data: Record<string, unknown> = { id, object: 'text_completion', created, model, choices: [choice] };
            if (includeUsage) data.usage = null;
            await out.send(data);
          }
          if (includeUsage) await out.send({ id, object: 'text_completion', created, model, choices: [], usage: usage() });
        },
        { promptParam: 'prompt' },
      );
    }

    for await (const chunk of gen.chunks) {
      const { ch, text, logprobs } = piece(chunk);
      ch.text += text;
      if (logprobs) ch.logprobs = ch.logprobs ? concatCompletionLogprobs(ch.logprobs, logprobs) : logprobs;
    }
    const sorted = [...choices.values()].sort((a, b) => a.index - b.index);
    return c.json({
      id,
      object: 'text_completion',
      created,
      model,
      system_fingerprint: null,
      choices: sorted.map((ch) => {
        const job = jobs[Math.floor(ch.index / n)]!;
        const choice: Record<string, unknown> = {
          index: ch.index,
          text: ch.text,
          logprobs: wantLogprobs ? ch.logprobs : null,
          finish_reason: ch.finishReason,
          stop_reason: ch.stopReason,
        };
        if (withTokenIds) {
          choice.prompt_token_ids = job.promptTokenIds;
          choice.token_ids = ch.tokenIds;
        }
        if (body.prompt_logprobs != null) choice.prompt_logprobs = job.promptLogprobs ? vllmPromptLogprobs(namedLogprobs(state, job.promptLogprobs)) : null;
        return choice;
      }),
      usage: usage(),
    });
  });
  return route;
}
