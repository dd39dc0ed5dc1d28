/**
 * Which chat template a request renders with. A template sent in the request (`chat_template`) is code the server
 * would run, so it is refused unless the server was started with `--trust-request-chat-template` (vLLM's flag and
 * rule). Trusted or not, every render runs under the engine's fuel and output-size limits, off the event loop.
 */

import { badRequest } from './errors.js';
import type { ServerState } from './state.js';

/** The template to render with: the request's (when trusted), else `--chat-template`, else the model's (undefined). */
export function requestChatTemplate(state: ServerState, fromRequest: string | null | undefined): string | undefined {
  if (fromRequest !== undefined && fromRequest !== null) {
    if (!state.options.trustRequestChatTemplate) {
      throw badRequest(
        'a chat template was sent with the request (`chat_template`), but the server does not run request templates ' +
          'unless it is started with --trust-request-chat-template',
        'chat_template',
        'untrusted_chat_template',
      );
    }
    return fromRequest;
  }
  return state.options.chatTemplate ?? undefined;
}
