import { Type, type SchemaOptions, type Static, type TSchema } from '@sinclair/typebox';
import type { Inference } from '../engine/inference.js';
import { ServerError } from '../errors.js';
import { Penalty } from './schemas.js';
import type { ChatMessage } from '../tokenizer/chat-template.js';

/** OpenAI's chat messages, as /v1/chat/completions and /v1/tokenize take them. */
export const Messages = Type.Array(
  Type.Object(
    {
      role: Type.String({ minLength: 1, maxLength: 64 }),
      // A string, or OpenAI's content parts (text only here), or null (an assistant turn of tool calls).
      content: Type.Optional(Type.Union([Type.String(), Type.Array(Type.Object({ type: Type.String(), text: Type.Optional(Type.String()) }, { additionalProperties: true }), { maxItems: 256 }), Type.Null()])),
    },
    // name, tool_calls, tool_call_id…: passed to the template as they are.
    { additionalProperties: true },
  ),
  { minItems: 1, maxItems: 1024 },
);

/** OpenAI's `stop`, as its alternatives (a route adds null where it takes it): a string, or up to 4. */
export const StopForms = [Type.String({ minLength: 1, maxLength: 256 }), Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { maxItems: 4 })];

/** A `stop` as a list (none where absent). */
export const stopList = (stop: string | string[] | null | undefined): string[] | undefined => (stop === undefined || stop === null ? undefined : Array.isArray(stop) ? stop : [stop]);

/** OpenAI's `seed`: choice i draws with seed + i, so exact integers only. */
export const Seed = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER - 16 });

/** An optional field that may also be null, as OpenAI's API marks most of its request fields (null: the default). */
export const orNull = <T extends TSchema>(schema: T, options: SchemaOptions = {}) => Type.Optional(Type.Union([schema, Type.Null()], options));

/** OpenAI's `presence_penalty` and `frequency_penalty` (what: schemas.ts PRESENCE or FREQUENCY). */
export const penalty = (what: string) => orNull(Penalty(what));

/** vLLM's `top_k` extension of the OpenAI routes: -1 or 0 is off (vLLM's old and new default), at most 1000 as in generate. */
export const topK = orNull(Type.Integer({ minimum: -1, maximum: 1000 }), { description: "vLLM's extension: sample among the k likeliest tokens (-1 or 0: off; at most 1000)" });

/**
 * Sampling parameters of vLLM's OpenAI routes that this server does not implement, with their
 * neutral values: a client that sets one (as `extra_body`) gets 400 rather than other output.
 */
export const VLLM_UNSUPPORTED: Record<string, unknown[]> = {
  min_p: [0, null],
  repetition_penalty: [1, null],
  min_tokens: [0, null],
  use_beam_search: [false, null],
};

/** OpenAI's `logit_bias`: token ids in decimal digits → bias, at most 300. */
export const logitBias = (description?: string) => Type.Record(Type.String({ pattern: '^[0-9]+$' }), Type.Number({ minimum: -100, maximum: 100 }), { maxProperties: 300, additionalProperties: false, description });

/** Messages as a template reads them: text parts joined by newlines (as vLLM joins them), other parts refused, no content null (a turn of tool calls). */
export function chatMessages(messages: Static<typeof Messages>): ChatMessage[] {
  return messages.map((m, i) => {
    const content = m.content;
    if (content === undefined || content === null || typeof content === 'string') return { ...m, content: content ?? null };
    const other = content.find((part) => part.type !== 'text');
    if (other) throw new ServerError('invalid_request', `messages[${i}]: content parts of type '${other.type}' are not supported (text only)`);
    const empty = content.findIndex((part) => typeof part.text !== 'string');
    if (empty >= 0) throw new ServerError('invalid_request', `messages[${i}].content[${empty}]: a text part needs its text`);
    return { ...m, content: content.map((part) => part.text).join('\n') };
  });
}

/**
 * Refuses an OpenAI parameter that would change the output and that this server does not
 * implement: `unsupported` maps each to its neutral values (compared as JSON), which are accepted.
 */
export function refuseUnsupported(body: Record<string, unknown>, unsupported: Record<string, unknown[]>): void {
  for (const [name, neutral] of Object.entries(unsupported)) {
    const value = body[name];
    if (Object.hasOwn(body, name) && value !== undefined && !neutral.some((n) => JSON.stringify(n) === JSON.stringify(value))) {
      throw new ServerError('invalid_request', `${name} is not supported by this server; leave it out`);
    }
  }
}

/**
 * A token as OpenAI's logprobs name it: its text, or, where it is not whole characters (a partial
 * UTF-8 character reads U+FFFD), `bytes:` and its bytes, as `bytes:\xe2\x80`.
 */
export function tokenName(inference: Inference, id: number): string {
  const text = inference.tokenText(id);
  if (!text.includes('\ufffd')) return text;
  return `bytes:${inference.tokenBytes(id).map((b) => `\\x${b.toString(16).padStart(2, '0')}`).join('')}`;
}
