/**
 * The request fields that ask for constrained decoding, read into the TS API's `structuredOutputs`:
 * - OpenAI's `response_format`: `{type: "text"}` (nothing), `{type: "json_object"}`,
 *   `{type: "json_schema", json_schema: {name, schema, strict, description}}`
 *   (https://platform.openai.com/docs/api-reference/chat/create#chat-create-response_format);
 * - vLLM's `structured_outputs: {json, regex, choice, grammar, json_object, disable_any_whitespace}` and its older
 *   `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` spellings, with `guided_decoding_backend`
 *   accepted only when it names our backend (llguidance) or `auto`
 *   (vllm/entrypoints/openai/protocol.py, `_get_structured_outputs`).
 *
 * A request may use one of these sources; two at once (say `response_format` and `guided_regex`) is a 400, since
 * vLLM's precedence rules between them surprise clients. `renames` maps the engine's parameter name back to the
 * field the client sent, so an invalid schema's 400 points at `response_format.json_schema.schema` or
 * `guided_json` rather than at an internal name.
 */

import { z } from 'zod';

import type { StructuredOutputs } from '../sampling-params.js';
import { badRequest, notSupported } from './errors.js';

/** `guided_decoding_backend` values that mean the backend we have. */
export const OUR_BACKENDS = ['guidance', 'llguidance', 'auto'] as const;

const jsonSchemaValue = z.union([z.record(z.string(), z.unknown()), z.boolean(), z.string().min(1, 'must not be empty')], {
  error: 'must be a JSON Schema (an object, a boolean, or its JSON text)',
});

const responseFormatSchema = z.discriminatedUnion(
  'type',
  [
    z.looseObject({ type: z.literal('text') }),
    z.looseObject({ type: z.literal('json_object') }),
    z.looseObject({
      type: z.literal('json_schema'),
      json_schema: z.looseObject({
        name: z.string().min(1, 'must not be empty').max(64, 'must be at most 64 characters'),
        description: z.string().nullish(),
        schema: z.union([z.record(z.string(), z.unknown()), z.boolean()]).nullish(),
        strict: z.boolean().nullish(),
      }),
    }),
  ],
  { error: 'must have `type` "text", "json_object" or "json_schema"' },
);

const vllmStructuredOutputsSchema = z.looseObject({
  json: jsonSchemaValue.nullish(),
  regex: z.string().min(1, 'must not be empty').nullish(),
  choice: z.array(z.string()).min(1, 'must list at least one choice').nullish(),
  grammar: z.string().min(1, 'must not be empty').nullish(),
  json_object: z.boolean().nullish(),
  disable_any_whitespace: z.boolean().nullish(),
});

/** vLLM `structured_outputs` fields we do not implement (refused, never dropped). */
const UNSUPPORTED_VLLM_KEYS = ['structural_tag', 'whitespace_pattern', 'disable_additional_properties', 'disable_fallback'] as const;

export interface RequestConstraint {
  structuredOutputs: StructuredOutputs;
  /** Engine parameter (camelCase, as the TS API reports it) -> the request field it came from. */
  renames: Record<string, string>;
}

function parseWith<S extends z.ZodType>(schema: S, value: unknown, prefix: string): z.output<S> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const at = [prefix, ...issue.path.map(String)].join('.');
  throw badRequest(`invalid value for \`${at}\`: ${issue.message}`, at);
}

/** The constraint `body` (a raw request body) asks for, or `undefined` for none. Throws a 400 `HttpError`. */
export function constraintFromRequest(body: Record<string, unknown>): RequestConstraint | undefined {
  const sources: RequestConstraint[] = [];
  const sourceNames: string[] = [];
  const add = (name: string, so: StructuredOutputs, renames: Record<string, string>) => {
    sources.push({ structuredOutputs: so, renames });
    sourceNames.push(name);
  };

  const backend = body.guided_decoding_backend;
  if (backend !== undefined && backend !== null) {
    if (typeof backend !== 'string' || !(OUR_BACKENDS as readonly string[]).includes(backend.toLowerCase())) {
      throw notSupported('guided_decoding_backend', `${JSON.stringify(backend)} (this server has "guidance", i.e. llguidance)`);
    }
  }

  if (body.response_format !== undefined && body.response_format !== null) {
    const rf = parseWith(responseFormatSchema, body.response_format, 'response_format');
    if (rf.type === 'json_object') {
      add('response_format', { jsonObject: true }, { structuredOutputs: 'response_format', 'structuredOutputs.jsonObject': 'response_format' });
    } else if (rf.type === 'json_schema') {
      const schema = rf.json_schema.schema ?? {};
      add('response_format', { json: schema as StructuredOutputs['json'] }, {
        structuredOutputs: 'response_format',
        'structuredOutputs.json': 'response_format.json_schema.schema',
      });
    }
  }

  if (body.structured_outputs !== undefined && body.structured_outputs !== null) {
    const so = parseWith(vllmStructuredOutputsSchema, body.structured_outputs, 'structured_outputs');
    for (const key of UNSUPPORTED_VLLM_KEYS) {
      const v = (so as Record<string, unknown>)[key];
      if (v !== undefined && v !== null && v !== false) throw notSupported(`structured_outputs.${key}`, '');
    }
    const out: StructuredOutputs = {};
    if (so.json != null) out.json = so.json as StructuredOutputs['json'];
    if (so.regex != null) out.regex = so.regex;
    if (so.choice != null) out.choice = so.choice;
    if (so.grammar != null) out.grammar = so.grammar;
    if (so.json_object === true) out.jsonObject = true;
    if (so.disable_any_whitespace != null) out.disableAnyWhitespace = so.disable_any_whitespace;
    const kinds = (['json', 'regex', 'choice', 'grammar', 'jsonObject'] as const).filter((k) => out[k] !== undefined);
    if (kinds.length !== 1) {
      throw badRequest(
        kinds.length === 0
          ? 'invalid value for `structured_outputs`: set exactly one of json, regex, choice, grammar, json_object'
          : `invalid value for \`structured_outputs\`: set exactly one constraint, got ${kinds.join(', ')}`,
        'structured_outputs',
      );
    }
    add('structured_outputs', out, {
      structuredOutputs: 'structured_outputs',
      'structuredOutputs.jsonObject': 'structured_outputs.json_object',
    });
  }

  const guided: [string, keyof StructuredOutputs, z.ZodType][] = [
    ['guided_json', 'json', jsonSchemaValue],
    ['guided_regex', 'regex', z.string().min(1, 'must not be empty')],
    ['guided_choice', 'choice', z.array(z.string()).min(1, 'must list at least one choice')],
    ['guided_grammar', 'grammar', z.string().min(1, 'must not be empty')],
  ];
  for (const [field, kind, schema] of guided) {
    const v = body[field];
    if (v === undefined || v === null) continue;
    const value = parseWith(schema, v, field);
    add(field, { [kind]: value } as StructuredOutputs, { structuredOutputs: field, [`structuredOutputs.${kind}`]: field });
  }

  if (sources.length === 0) return undefined;
  if (sources.length > 1) {
    throw badRequest(
      `\`${sourceNames[1]}\` cannot be combined with \`${sourceNames[0]}\`: ask for one output constraint`,
      sourceNames[1]!,
    );
  }
  return sources[0];
}
