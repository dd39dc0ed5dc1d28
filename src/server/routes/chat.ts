/**
 * POST /v1/chat/completions: messages rendered with the model's chat template (or `--chat-template`, or the
 * request's `chat_template`), generation until the context ends unless `max_completion_tokens`/`max_tokens` says
 * otherwise, log-probs in OpenAI's chat format. Streaming sends, per choice, a first delta `{role: "assistant",
 * content: ""}` as OpenAI does, then content deltas; `finish_reason` rides on the last content chunk.
 * `response_format` (json_object, json_schema) and vLLM's `structured_outputs` / `guided_*` fields constrain the
 * output (structured-outputs.ts). Tools and reasoning (`chat-tools.ts`): the template gets `tools`, answers are
 * split into `reasoning_content`, `content` and `tool_calls`, and streams carry the matching deltas.
 */

import { Hono } from 'hono';

import type { AppEnv } from '../app-env.js';
import { toChatMessages } from '../chat-messages.js';
import { chatFinishReason, chatTooling, deltaFields, joinDeltas, messageFields } from '../chat-tools.js';
import { AnswerStream, parseAnswer } from '../../tools/answer.js';
import { badRequest, toHttpError } from '../errors.js';
import { startGeneration } from '../generation.js';
import { type ChatTokenLogprob, chatLogprobs } from '../logprobs.js';
import { tokenizePrompts } from '../prompt-tokens.js';
import { readJson, resolveModel, validate } from '../request.js';
import { constraintFromRequest } from '../structured-outputs.js';
import { refuseUnsupportedFields } from '../unsupported-fields.js';
import { requireTokenizer } from '../token-ids.js';
import { requestChatTemplate } from '../chat-template-trust.js';
import { type ChatRequest, chatRequestSchema } from '../schemas/chat.js';
import { samplingParamsFrom } from '../schemas/common.js';
import { sseResponse } from '../sse.js';
import type { ServerState } from '../state.js';
import type { FinishReason } from '../../outputs.js';

function refuseUnsupported(body: ChatRequest): void {
  if (body.top_logprobs != null && body.top_logprobs > 0 && !body.logprobs) {
    throw badRequest('invalid value for `top_logprobs`: `logprobs` must be true when `top_logprobs` is set', 'top_logprobs');
  }
}

interface ChoiceState {
  content: string;
  tokenIds: number[];
  tokens: number;
  logprobs: ChatTokenLogprob[];
  finishReason: FinishReason | null;
  stopReason: string | number | null;
}

export function chatRoute(state: ServerState): Hono<AppEnv> {
  const route = new Hono<AppEnv>();
  route.post('/v1/chat/completions', async (c) => {
    const raw = await readJson(c);
    const body = validate(chatRequestSchema, raw);
    refuseUnsupportedFields(raw, 'chat');
    const model = resolveModel(state, body.model);
    requireTokenizer(state, 'chat completions', 'messages');
    refuseUnsupported(body);
    const withTokenIds = body.return_token_ids === true;
    const chatTemplate = requestChatTemplate(state, body.chat_template);
    const tooling = chatTooling(state, body);

    const constraint = constraintFromRequest(raw as Record<string, unknown>);
    let params = samplingParamsFrom(body);
    if (constraint) params.structuredOutputs = constraint.structuredOutputs;
    params.maxTokens = body.max_completion_tokens ?? body.max_tokens ?? null;
    const wantLogprobs = body.logprobs === true;
    const topCount = body.top_logprobs ?? 0;
    if (wantLogprobs) params.logprobs = topCount;
    const n = body.n ?? 1;
    params = tooling.adjustParams(params);

    let prompt: string;
    try {
      prompt = await state.llm.applyChatTemplateAsync(toChatMessages(body.messages), {
        addGenerationPrompt: body.add_generation_prompt ?? true,
        chatTemplate,
        chatTemplateKwargs: tooling.templateKwargs,
      });
    } catch (err) {
      throw toHttpError(err, { promptParam: 'messages' });
    }
    const [promptIds] = await tokenizePrompts(state, [prompt], { addSpecialTokens: false, param: 'messages' });

    const requestId = c.get('requestId');
    const id = `chatcmpl-${requestId}`;
    const created = Math.floor(Date.now() / 1000);
    const gen = await startGeneration(state, [{ prompt: promptIds!, params, addSpecialTokens: false, cacheSalt: body.cache_salt ?? undefined }], {
      requestId,
      signal: c.req.raw.signal,
      promptParam: 'messages',
      renames: constraint?.renames,
    });

    let promptTokens = 0;
    const choices = Array.from({ length: n }, (): ChoiceState => ({ content: '', tokenIds: [], tokens: 0, logprobs: [], finishReason: null, stopReason: null }));
    const usage = () => {
      const completionTokens = choices.reduce((sum, ch) => sum + ch.tokens, 0);
      return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
    };

    if (body.stream) {
      const includeUsage = body.stream_options?.include_usage ?? false;
      const envelope = (choiceList: unknown[]): Record<string, unknown> => {
        const data: Record<string, unknown> = { id, object: 'chat.completion.chunk', created, model, system_fingerprint: null, choices: choiceList };
        if (includeUsage) data.usage = null;
        return data;
      };
      return sseResponse(
        c,
        () => gen.abort(),
        async (out) => {
          for (let index = 0; index < n; index++) {
            const first = envelope([{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]);
            if (withTokenIds) first.prompt_token_ids = promptIds;
            await out.send(first);
          }
          const answers = choices.map(() => new AnswerStream(tooling.plan, tooling.reasoning));
          for await (const { delta: d } of gen.chunks) {
            if (d.promptTokenIds) promptTokens = d.promptTokenIds.length;
            const ch = choices[d.index]!;
            ch.tokens += d.tokenIds.length;
            // Token ids held back with their text (tool-call markup, reasoning) go out with the next chunk sent.
            if (withTokenIds) ch.tokenIds.push(...d.tokenIds);
            const logprobs = wantLogprobs && d.logprobs ? chatLogprobs(d.logprobs, topCount) : null;
            const answer = answers[d.index]!;
            let parsed = answer.push(d.text);
            if (d.finishReason !== null) parsed = joinDeltas(parsed, answer.finish());
            const delta = deltaFields(parsed);
            if (Object.keys(delta).length === 0 && d.finishReason === null && (logprobs === null || logprobs.length === 0)) continue;
            const choice: Record<string, unknown> = {
              index: d.index,
              delta,
              logprobs: logprobs ? { content: logprobs } : null,
              finish_reason: chatFinishReason(d.finishReason, answer.callCount),
              stop_reason: d.finishReason === null ? null : d.stopReason,
            };
            if (withTokenIds) {
              choice.token_ids = ch.tokenIds;
              ch.tokenIds = [];
            }
            await out.send(envelope([choice]));
          }
          if (includeUsage) {
            await out.send({ id, object: 'chat.completion.chunk', created, model, system_fingerprint: null, choices: [], usage: usage() });
          }
        },
        { promptParam: 'messages' },
      );
    }

    for await (const { delta: d } of gen.chunks) {
      if (d.promptTokenIds) promptTokens = d.promptTokenIds.length;
      const ch = choices[d.index]!;
      ch.content += d.text;
      ch.tokens += d.tokenIds.length;
      if (withTokenIds) ch.tokenIds.push(...d.tokenIds);
      if (wantLogprobs && d.logprobs) ch.logprobs.push(...chatLogprobs(d.logprobs, topCount));
      if (d.finishReason !== null) ch.finishReason = d.finishReason;
      if (d.stopReason !== null) ch.stopReason = d.stopReason;
    }
    return c.json({
      id,
      object: 'chat.completion',
      created,
      model,
      system_fingerprint: null,
      choices: choices.map((ch, index) => {
        const answer = parseAnswer(ch.content, tooling.plan, tooling.reasoning);
        return {
          index,
          message: messageFields(answer, tooling.reasoning !== null),
          logprobs: wantLogprobs ? { content: ch.logprobs } : null,
          finish_reason: chatFinishReason(ch.finishReason, answer.toolCalls.length),
          stop_reason: ch.stopReason,
          ...(withTokenIds ? { token_ids: ch.tokenIds } : {}),
        };
      }),
      usage: usage(),
      ...(withTokenIds ? { prompt_token_ids: promptIds } : {}),
    });
  });
  return route;
}
