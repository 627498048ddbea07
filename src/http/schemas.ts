import { Type, type Static } from '@sinclair/typebox';

const ErrorBody = Type.Object({ error: Type.Object({ code: Type.String(), message: Type.String() }) }, { $id: 'Error' });

/**
 * A response object of numbers keyed by arbitrary strings (labels, token texts). Not Type.Record:
 * its pattern `^(.*)$` does not match a key with a newline, and the response serializer silently
 * dropped such keys (a token text "\n" vanished from `top_logprobs`).
 */
export const NumbersByKey = () => Type.Object({}, { additionalProperties: Type.Number() });

export const TaskParams = Type.Object({ task: Type.String({ maxLength: 128 }) });
export type TaskParams = Static<typeof TaskParams>;

/** OpenAI's `presence_penalty` or `frequency_penalty` (Sampling.penalties): -2 to 2. */
export const Penalty = (what: string) => Type.Number({ minimum: -2, maximum: 2, description: `Subtracted from a token's logit ${what}, before sampling and logprobs (OpenAI's definition, over the tokens this request generated)` });
export const PRESENCE = 'once it has been generated';
export const FREQUENCY = 'times the number of times it has been generated';

export const GenerateBody = Type.Object(
  {
    prompt: Type.String(),
    raw: Type.Optional(Type.Boolean({ default: false })),
    max_tokens: Type.Optional(Type.Integer({ minimum: 1, maximum: 4096, default: 64 })),
    temperature: Type.Optional(Type.Number({ minimum: 0, maximum: 100, default: 1 })),
    top_p: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 1 })),
    top_k: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000, default: 0, description: 'Sample among the k most likely tokens (0: off; at most 1000).' })),
    seed: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
    stop: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { maxItems: 4 })),
    logprobs: Type.Optional(Type.Integer({ minimum: 0, maximum: 20, default: 0 })),
    presence_penalty: Type.Optional(Penalty(PRESENCE)),
    frequency_penalty: Type.Optional(Penalty(FREQUENCY)),
    stream: Type.Optional(Type.Boolean({ default: false })),
    ignore_eos: Type.Optional(Type.Boolean({ default: false, description: 'Keep generating past end-of-text until max_tokens (benchmarks).' })),
  },
  { additionalProperties: false, examples: [{ prompt: 'In the beginning', max_tokens: 20, temperature: 0 }] },
);
export type GenerateBody = Static<typeof GenerateBody>;

const TokenLogprob = Type.Object({ token_id: Type.Integer(), logprob: Type.Number() });
export const GenerateResponse = Type.Object({
  task: Type.String(),
  adapter_version: Type.String(),
  text: Type.String(),
  token_ids: Type.Array(Type.Integer()),
  finish_reason: Type.Union([Type.Literal('stop'), Type.Literal('length')]),
  usage: Type.Object({ prompt_tokens: Type.Integer(), completion_tokens: Type.Integer() }),
  logprobs: Type.Optional(Type.Array(Type.Object({ token_id: Type.Integer(), logprob: Type.Number(), top: Type.Array(TokenLogprob) }))),
});

export const ClassifyBody = Type.Object(
  {
    input: Type.Union([Type.String(), Type.Array(Type.String(), { minItems: 1, maxItems: 64 })]),
    labels: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { minItems: 2, maxItems: 64 })),
    prompt_template: Type.Optional(Type.String({ maxLength: 10_000 })),
  },
  { additionalProperties: false, examples: [{ input: ['happily', 'ocean'] }] },
);
export type ClassifyBody = Static<typeof ClassifyBody>;

export const ClassifyResponse = Type.Object({
  task: Type.String(),
  adapter_version: Type.String(),
  results: Type.Array(Type.Object({ label: Type.String(), scores: NumbersByKey() })),
});

export const ScoreBody = Type.Object(
  {
    prompt: Type.String(),
    completion: Type.String(),
    raw: Type.Optional(Type.Boolean({ default: false })),
    eos: Type.Optional(Type.Boolean({ default: false })),
    max_length: Type.Optional(Type.Integer({ minimum: 1, description: 'Score only the first max_length tokens of prompt + completion (+ end-of-text), as a tokenizer with max_length truncates a training example.' })),
  },
  { additionalProperties: false, examples: [{ prompt: 'ocean:', completion: ' a large body of salt water', raw: true, eos: true }] },
);
export type ScoreBody = Static<typeof ScoreBody>;

export const ScoreResponse = Type.Object({
  task: Type.String(),
  adapter_version: Type.String(),
  logprob: Type.Number(),
  mean_logprob: Type.Number(),
  tokens: Type.Integer(),
});

export { ErrorBody };
export const errorResponses = { 400: ErrorBody, 404: ErrorBody, 413: ErrorBody, 429: ErrorBody, 503: ErrorBody };
