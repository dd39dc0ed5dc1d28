/**
 * `pythonic`: calls written as a Python list of calls, `[get_weather(city="Paris"), get_time(zone='CET')]`, the
 * format of Llama 3.2 / Llama 4 pythonic templates and several small tool models (vLLM's
 * `pythonic_tool_parser.py`). Keyword arguments only; values are Python literals (strings, numbers, True / False
 * / None, lists, tuples, dicts), converted to JSON for `arguments`. The whole answer must be the list (optionally
 * inside `<|python_start|>...<|python_end|>`); anything else is plain content.
 *
 * vLLM parses with Python's `ast`; JavaScript has no Python parser, so a small recursive-descent reader of the
 * literal subset lives here. While streaming, a call's name is announced as soon as `name(` is read and its
 * arguments are sent once the call's closing parenthesis arrives (a Python prefix has no JSON prefix to stream).
 */

import { type CallScan, type OutputScan, RescanStream, extractWith } from './call-scan.js';
import { type ToolParser, partialMarkerSuffix } from './types.js';

const START = '<|python_start|>';
const END = '<|python_end|>';

class Incomplete extends Error {}
class Invalid extends Error {}

class PythonReader {
  pos = 0;
  constructor(private readonly text: string) {}

  private peek(): string {
    if (this.pos >= this.text.length) throw new Incomplete();
    return this.text[this.pos]!;
  }

  skipSpace(): void {
    while (this.pos < this.text.length && /\s/.test(this.text[this.pos]!)) this.pos++;
  }

  /** Reads `c` (after whitespace) or throws. */
  expect(c: string): void {
    this.skipSpace();
    if (this.peek() !== c) throw new Invalid(`expected ${c}`);
    this.pos++;
  }

  /** Whether the next non-space character is `c` (consumed when it is). */
  accept(c: string): boolean {
    this.skipSpace();
    if (this.peek() === c) {
      this.pos++;
      return true;
    }
    return false;
  }

  /** After a list item: a comma, or (left unread) the closing bracket. */
  endOfItem(close: string): void {
    if (this.accept(',')) return;
    this.skipSpace();
    if (this.peek() !== close) throw new Invalid(`expected , or ${close}`);
  }

  identifier(): string {
    this.skipSpace();
    const match = /^[A-Za-z_][\w.-]*/.exec(this.text.slice(this.pos));
    if (!match) throw new Invalid('expected a name');
    this.pos += match[0].length;
    // A name running to the end of the text may still grow.
    if (this.pos >= this.text.length) throw new Incomplete();
    return match[0];
  }

  value(): unknown {
    this.skipSpace();
    const c = this.peek();
    if (c === '"' || c === "'") return this.string(c);
    if (c === '[') return this.sequence('[', ']');
    if (c === '(') return this.sequence('(', ')');
    if (c === '{') return this.dict();
    const word = /^[-+]?(?:\d[\d_]*\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|True|False|None)/.exec(this.text.slice(this.pos));
    if (!word) {
      const rest = this.text.slice(this.pos);
      if (['True', 'False', 'None'].some((w) => w.startsWith(rest)) || /^[-+]$/.test(rest)) throw new Incomplete();
      throw new Invalid('expected a Python literal');
    }
    this.pos += word[0].length;
    if (this.pos >= this.text.length) throw new Incomplete();
    if (word[0] === 'True') return true;
    if (word[0] === 'False') return false;
    if (word[0] === 'None') return null;
    const n = Number(word[0].replaceAll('_', ''));
    if (!Number.isFinite(n)) throw new Invalid('bad number');
    return n;
  }

  private string(quote: string): string {
    const escapes: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', "'": "'", '"': '"', '0': '\0' };
    let out = '';
    this.pos++;
    for (;;) {
      const c = this.peek();
      this.pos++;
      if (c === quote) return out;
      if (c !== '\\') {
        out += c;
        continue;
      }
      const e = this.peek();
      this.pos++;
      if (e === 'u' || e === 'x') {
        const len = e === 'u' ? 4 : 2;
        if (this.pos + len > this.text.length) throw new Incomplete();
        const hex = this.text.slice(this.pos, this.pos + len);
        if (!/^[0-9a-fA-F]+$/.test(hex)) throw new Invalid('bad escape');
        out += String.fromCharCode(parseInt(hex, 16));
        this.pos += len;
      } else out += escapes[e] ?? '\\' + e;
    }
  }

  private sequence(open: string, close: string): unknown[] {
    this.expect(open);
    const items: unknown[] = [];
    while (!this.accept(close)) {
      items.push(this.value());
      this.endOfItem(close);
    }
    return items;
  }

  private dict(): Record<string, unknown> {
    this.expect('{');
    const out: Record<string, unknown> = {};
    while (!this.accept('}')) {
      const key = this.value();
      if (typeof key !== 'string' && typeof key !== 'number') throw new Invalid('dict keys must be strings or numbers');
      this.expect(':');
      out[String(key)] = this.value();
      this.endOfItem('}');
    }
    return out;
  }
}

/** Reads `[call, call, ...]`; the calls read before the text ended (or before an error) are kept. */
function scanCallList(text: string, final: boolean): { calls: CallScan[]; invalid: boolean; complete: boolean } {
  const calls: CallScan[] = [];
  const reader = new PythonReader(text);
  try {
    reader.expect('[');
    while (!reader.accept(']')) {
      const name = reader.identifier();
      reader.expect('(');
      const call: CallScan = { name, args: '', complete: false };
      calls.push(call);
      const args: Record<string, unknown> = {};
      while (!reader.accept(')')) {
        const key = reader.identifier();
        reader.expect('=');
        args[key] = reader.value();
        reader.endOfItem(')');
      }
      call.args = JSON.stringify(args);
      call.complete = true;
      reader.endOfItem(']');
    }
    reader.skipSpace();
    return { calls, invalid: reader.pos < text.length, complete: true };
  } catch (err) {
    if (err instanceof Incomplete) return { calls, invalid: final, complete: false };
    if (err instanceof Invalid) return { calls, invalid: true, complete: false };
    throw err;
  }
}

export function scanPythonic(text: string, final: boolean): OutputScan {
  let body = text.trimStart();
  if (body === '' || (!final && partialMarkerSuffix(body, START) === body.length)) {
    return { content: final ? text : '', calls: [], invalid: false };
  }
  if (body.startsWith(START)) {
    body = body.slice(START.length);
    const end = body.indexOf(END);
    if (end >= 0) {
      if (body.slice(end + END.length).trim() !== '') return { content: '', calls: [], invalid: true };
      body = body.slice(0, end);
    }
    if (body.trim() === '') return { content: '', calls: [], invalid: final };
  }
  if (!body.trimStart().startsWith('[')) return { content: text, calls: [], invalid: false };
  const scanned = scanCallList(body, final);
  return { content: '', calls: scanned.calls, invalid: scanned.invalid };
}

export const pythonicParser: ToolParser = {
  name: 'pythonic',
  needsSpecialTokens: true,
  extract: (text) => extractWith(scanPythonic, text),
  stream: () => new RescanStream(scanPythonic),
};
