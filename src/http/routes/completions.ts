import { randomUUID } from 'node:crypto';
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { GenerateResult, Inference } from '../../engine/inference.js';
import { ServerError } from '../../errors.js';
import { clientGone, openEventStream } from '../sse.js';
import { errorResponses } from '../schemas.js';

const CompletionBody = Type.Object(
  {
    model: Type.String({ maxLength: 128, description: 'A task id, or base' }),
    prompt: Type.Union([Type.String({ maxLength: 100_000 }), Type.Array(Type.String({ maxLength: 100_000 }), { minItems: 1, maxItems: 64 })]),
    max_tokens: Type.Optional(Type.Integer({ minimum: 1, maximum: 4096, default: 16 })),
    temperature: Type.Optional(Type.Number({ minimum: 0, maximum: 2, default: 1 })),
    top_p: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 1 })),
    stop: Type.Optional(Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { maxItems: 4 })])),
    seed: Type.Optional(Type.Integer({ minimum: 0 })),
    logprobs: Type.Optional(Type.Union([Type.Integer({ minimum: 0, maximum: 20 }), Type.Null()])),
    stream: Type.Optional(Type.Boolean({ default: false })),
    n: Type.Optional(Type.Integer({ minimum: 1, maximum: 1, description: 'Only 1 is supported' })),
    echo: Type.Optional(Type.Boolean({ description: 'Only false is supported' })),
  },
  // OpenAI clients send fields this subset does not use (user, stream_options...): they are ignored.
  { additionalProperties: true, examples: [{ model: 'kjv-prompt', prompt: 'And the LORD said', max_tokens: 16, temperature: 0 }] },
);
type CompletionBody = Static<typeof CompletionBody>;

const Logprobs = Type.Union([
  Type.Null(),
  Type.Object({
    tokens: Type.Array(Type.String()),
    token_logprobs: Type.Array(Type.Number()),
    top_logprobs: Type.Array(Type.Record(Type.String(), Type.Number())),
    text_offset: Type.Array(Type.Integer()),
  }),
]);
const CompletionResponse = Type.Object({
  id: Type.String(),
  object: Type.Literal('text_completion'),
  created: Type.Integer(),
  model: Type.String(),
  choices: Type.Array(Type.Object({ index: Type.Integer(), text: Type.String(), finish_reason: Type.Union([Type.String(), Type.Null()]), logprobs: Logprobs })),
  usage: Type.Object({ prompt_tokens: Type.Integer(), completion_tokens: Type.Integer(), total_tokens: Type.Integer() }),
});

/** OpenAI's completions logprobs layout, from ours. */
function openaiLogprobs(r: GenerateResult, tokenText: (id: number) => string) {
  if (!r.logprobs) return null;
  let offset = 0;
  const text_offset: number[] = [];
  const tokens = r.logprobs.map((l) => {
    const t = tokenText(l.token_id);
    text_offset.push(offset);
    offset += t.length;
    return t;
  });
  return {
    tokens,
    token_logprobs: r.logprobs.map((l) => l.logprob),
    top_logprobs: r.logprobs.map((l) => Object.fromEntries(l.top.map((x) => [tokenText(x.token_id), x.logprob]))),
    text_offset,
  };
}

export function completionsRoutes(app: FastifyInstance, inference: Inference): void {
  app.post<{ Body: CompletionBody }>(
    '/v1/completions',
    { schema: { tags: ['openai'], summary: 'OpenAI-compatible completions; model is a task id', body: CompletionBody, response: { 200: CompletionResponse, ...errorResponses } } },
    async (req, reply) => {
      const b = req.body;
      if (b.echo) throw new ServerError('invalid_request', 'echo is not supported');
      const prompts = Array.isArray(b.prompt) ? b.prompt : [b.prompt];
      const params = {
        raw: true,
        max_tokens: b.max_tokens ?? 16,
        temperature: b.temperature ?? 1,
        top_p: b.top_p ?? 1,
        stop: b.stop === undefined ? undefined : Array.isArray(b.stop) ? b.stop : [b.stop],
        seed: b.seed,
        logprobs: b.logprobs ?? 0,
      };
      const id = `cmpl-${randomUUID()}`;
      const created = Math.floor(Date.now() / 1000);
      const signal = clientGone(reply);
      const head = { id, object: 'text_completion' as const, created, model: b.model };
      const usage = (rs: GenerateResult[]) => {
        const prompt_tokens = rs.reduce((n, r) => n + r.usage.prompt_tokens, 0);
        const completion_tokens = rs.reduce((n, r) => n + r.usage.completion_tokens, 0);
        return { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens };
      };
      // The prompts are one request: validated, tokenised and admitted together (one refusal
      // refuses all before anything is sent or queued), and cancelled together.
      const all = prompts.map((prompt) => ({ ...params, prompt }));
      if (!b.stream) {
        const results = await inference.generateAll(b.model, all, { signal });
        return {
          ...head,
          choices: results.map((r, index) => ({ index, text: r.text, finish_reason: r.finish_reason, logprobs: openaiLogprobs(r, (t) => inference.tokenText(t)) })),
          usage: usage(results),
        };
      }
      const stream = openEventStream(reply);
      try {
        const results = await inference.generateAll(b.model, all, {
          signal,
          onToken: (index, _tokenId, text) => stream.send({ ...head, choices: [{ index, text, finish_reason: null, logprobs: null }] }),
        });
        results.forEach((r, index) => stream.send({ ...head, choices: [{ index, text: '', finish_reason: r.finish_reason, logprobs: null }] }));
        stream.send({ ...head, choices: [], usage: usage(results) });
        stream.done();
      } catch (e) {
        stream.fail(e as Error);
      }
    },
  );
}
