/**
 * POST /tokenize ({model, prompt} or {model, messages} -> {tokens, count, max_model_len}) and POST /detokenize
 * ({model, tokens} -> {prompt}), as vLLM serves them. Chat messages go through the same template as
 * /v1/chat/completions, so the counts match what generation would see.
 */

import { Hono } from 'hono';

import type { AppEnv } from '../app-env.js';
import { toChatMessages } from '../chat-messages.js';
import { toHttpError } from '../errors.js';
import { parseBody, readJson, resolveModel, validate } from '../request.js';
import { detokenizeRequestSchema, tokenizeRequestSchema } from '../schemas/tokenize.js';
import type { ServerState } from '../state.js';
import { requestChatTemplate } from '../chat-template-trust.js';
import { requireTokenizer } from '../token-ids.js';

export function tokenizeRoute(state: ServerState): Hono<AppEnv> {
  const route = new Hono<AppEnv>();
  const { llm } = state;
  const [promptSchema, messagesSchema] = tokenizeRequestSchema.options;

  route.post('/tokenize', async (c) => {
    const raw = await readJson(c);
    const isChat = typeof raw === 'object' && raw !== null && 'messages' in raw;
    requireTokenizer(state, '/tokenize', isChat ? 'messages' : 'prompt');
    let tokens: number[];
    try {
      if (isChat) {
        const body = validate(messagesSchema, raw);
        resolveModel(state, body.model);
        const text = await llm.applyChatTemplateAsync(toChatMessages(body.messages), {
          addGenerationPrompt: body.add_generation_prompt ?? true,
          chatTemplate: requestChatTemplate(state, body.chat_template),
          chatTemplateKwargs: body.chat_template_kwargs ?? undefined,
        });
        tokens = await llm.tokenizeAsync(text, { addSpecialTokens: body.add_special_tokens ?? false });
      } else {
        const body = validate(promptSchema, raw);
        resolveModel(state, body.model);
        tokens = await llm.tokenizeAsync(body.prompt, { addSpecialTokens: body.add_special_tokens ?? true });
      }
    } catch (err) {
      throw toHttpError(err, { promptParam: isChat ? 'messages' : 'prompt' });
    }
    return c.json({ count: tokens.length, max_model_len: llm.modelInfo.maxModelLen, tokens });
  });

  route.post('/detokenize', async (c) => {
    const body = await parseBody(c, detokenizeRequestSchema);
    resolveModel(state, body.model);
    requireTokenizer(state, '/detokenize', 'tokens');
    try {
      return c.json({ prompt: llm.detokenize(body.tokens) });
    } catch (err) {
      throw toHttpError(err, { renames: { ids: 'tokens' } });
    }
  });
  return route;
}
