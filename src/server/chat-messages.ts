/**
 * OpenAI chat messages to the engine's `ChatMessage`s: text content parts are joined with newlines (vLLM's rule),
 * `null` content becomes "", other fields (name, tool_call_id, tool_calls) pass through for the template. Non-text
 * parts (images, audio) are a 400 naming the part, never dropped silently.
 */

import type { ChatMessage } from '../llm.js';
import { notSupported } from './errors.js';
import type { ChatMessageInput } from './schemas/chat.js';

export function toChatMessages(messages: ChatMessageInput[]): ChatMessage[] {
  return messages.map((m, i) => {
    let content: string;
    if (typeof m.content === 'string') content = m.content;
    else if (m.content === null || m.content === undefined) content = '';
    else {
      content = m.content
        .map((part, j) => {
          if (part.type !== 'text' || typeof part.text !== 'string') {
            throw notSupported(`messages[${i}].content[${j}]`, `of type "${part.type}"`);
          }
          return part.text;
        })
        .join('\n');
    }
    return { ...m, content } as ChatMessage;
  });
}
