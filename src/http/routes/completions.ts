import { randomUUID } from 'node:crypto';
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { GenerateResult, Inference, TokenLogprob } from '../../engine/inference.js';
import { ServerError } from '../../errors.js';
import { clientGone, openEventStream } from '../sse.js';
import { logitBias, orNull, penalty, refuseUnsupported, Seed, StopForms, stopList, tokenName, topK, VLLM_UNSUPPORTED } from '../openai.js';
import { errorResponses, FREQUENCY, NumbersByKey, PRESENCE } from '../schemas.js';

const CompletionBody = Type.Object(
  {
    model: Type.String({ maxLength: 128, description: 'A task id, or base' }),
    prompt: Type.Union([Type.String(), Type.Array(Type.String(), { minItems: 1, maxItems: 64 })]),
    max_tokens: orNull(Type.Integer({ minimum: 1, maximum: 4096 }), { default: 16 }),
    temperature: orNull(Type.Number({ minimum: 0, maximum: 2 }), { default: 1 }),
    top_p: orNull(Type.Number({ exclusiveMinimum: 0, maximum: 1 }), { default: 1 }),
    top_k: topK,
    stop: orNull(Type.Union(StopForms)),
    seed: orNull(Seed),
    logprobs: orNull(Type.Integer({ minimum: 0, maximum: 20 })),
    stream: orNull(Type.Boolean(), { default: false }),
    n: orNull(Type.Integer({ minimum: 1, maximum: 16 }), { default: 1, description: 'Completions per prompt: rows of the same batch, each with its own seed (seed + i when a seed is given)' }),
    echo: orNull(Type.Boolean(), { default: false, description: 'Put the prompt before each completion (not with logprobs)' }),
    logit_bias: orNull(logitBias('token id → bias added to its logit before sampling (and before logprobs), at most 300 entries')),
    presence_penalty: penalty(PRESENCE),
    frequency_penalty: penalty(FREQUENCY),
  },
  // OpenAI clients send fields that do not change the output (user, stream_options...): they are
  // ignored. Those that would change it and are not supported are refused (UNSUPPORTED).
  { additionalProperties: true, examples: [{ model: 'kjv-prompt', prompt: 'And the LORD said', max_tokens: 16, temperature: 0 }] },
);
type CompletionBody = Static<typeof CompletionBody>;

const Logprobs = Type.Union([
  Type.Null(),
  Type.Object({
    tokens: Type.Array(Type.String()),
    token_logprobs: Type.Array(Type.Number()),
    top_logprobs: Type.Array(NumbersByKey()),
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

/** Parameters that change OpenAI's output which this server does not implement, with their neutral values. */
const UNSUPPORTED: Record<string, unknown[]> = { best_of: [1, null], suffix: [null, ''], ...VLLM_UNSUPPORTED };

/** OpenAI's completions logprobs layout, from ours. */
function openaiLogprobs(logprobs: TokenLogprob[], name: (id: number) => string) {
  return {
    tokens: logprobs.map((l) => name(l.token_id)),
    token_logprobs: logprobs.map((l) => l.logprob),
    top_logprobs: logprobs.map((l) => topByName(l.top, name)),
    text_offset: logprobs.map((l) => l.offset),
  };
}

/** One step's alternatives keyed by name, most likely first; where two share a name, the likelier keeps it. */
function topByName(top: TokenLogprob['top'], name: (id: number) => string): Record<string, number> {
  const seen = new Set<string>();
  return Object.fromEntries(top.map((x) => [name(x.token_id), x.logprob] as const).filter(([n]) => !seen.has(n) && !!seen.add(n)));
}

export function completionsRoutes(app: FastifyInstance, inference: Inference): void {
  app.post<{ Body: CompletionBody }>(
    '/v1/completions',
    { schema: { tags: ['openai'], summary: 'OpenAI-compatible completions; model is a task id', body: CompletionBody, response: { 200: CompletionResponse, ...errorResponses } } },
    async (req, reply) => {
      const b = req.body;
      refuseUnsupported(b, UNSUPPORTED);
      const echo = b.echo ?? false;
      if (echo && typeof b.logprobs === 'number') throw new ServerError('invalid_request', 'echo with logprobs is not supported (the prompt tokens would need log-probabilities)');
      const prompts = Array.isArray(b.prompt) ? b.prompt : [b.prompt];
      const n = b.n ?? 1;
      if (prompts.length * n > 64) throw new ServerError('invalid_request', `${prompts.length} prompts × n ${n} asks for more than 64 completions in one request`);
      const params = {
        raw: true,
        max_tokens: b.max_tokens ?? 16,
        temperature: b.temperature ?? 1,
        top_p: b.top_p ?? 1,
        top_k: Math.max(0, b.top_k ?? 0),
        stop: stopList(b.stop),
        logprobs: b.logprobs ?? 0,
        chosen_logprob: typeof b.logprobs === 'number',
        logit_bias: b.logit_bias ?? undefined,
        presence_penalty: b.presence_penalty ?? undefined,
        frequency_penalty: b.frequency_penalty ?? undefined,
      };
      const name = (tokenId: number) => tokenName(inference, tokenId);
      const id = `cmpl-${randomUUID()}`;
      const created = Math.floor(Date.now() / 1000);
      const signal = clientGone(reply);
      const head = { id, object: 'text_completion' as const, created, model: b.model };
      const usage = (rs: GenerateResult[]) => {
        // A prompt counts once, however many completions it has.
        const prompt_tokens = rs.reduce((sum, r, i) => sum + (i % n === 0 ? r.usage.prompt_tokens : 0), 0);
        const completion_tokens = rs.reduce((sum, r) => sum + r.usage.completion_tokens, 0);
        return { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens };
      };
      // The prompts are one request: validated, tokenised and admitted together (one refusal
      // refuses all before anything is sent or queued), and cancelled together.
      // Choice i*n + j is the j-th completion of prompt i, as OpenAI orders them.
      const all = prompts.flatMap((prompt) => Array.from({ length: n }, (_, j) => ({ ...params, prompt, seed: b.seed === undefined || b.seed === null ? undefined : b.seed + j })));
      const text = (index: number, completion: string) => (echo ? all[index].prompt : '') + completion;
      if (!b.stream) {
        const results = await inference.generateAll(b.model, all, { signal });
        return {
          ...head,
          choices: results.map((r, index) => ({ index, text: text(index, r.text), finish_reason: r.finish_reason, logprobs: r.logprobs ? openaiLogprobs(r.logprobs, name) : null })),
          usage: usage(results),
        };
      }
      const echoed = new Set<number>();
      const echoOnce = (index: number, chunk: string) => (echoed.has(index) ? chunk : (echoed.add(index), text(index, chunk)));
      // Each token's chunk carries its log-probabilities, in the non-streamed layout.
      const chunkLogprobs = (lp: TokenLogprob | undefined) => (lp ? openaiLogprobs([lp], name) : null);
      const stream = openEventStream(reply);
      try {
        const results = await inference.generateAll(b.model, all, {
          signal,
          // Echo: a choice's prompt goes out with its first chunk, once the request was admitted.
          onToken: (index, _tokenId, chunk, lp) => stream.send({ ...head, choices: [{ index, text: echoOnce(index, chunk), finish_reason: null, logprobs: chunkLogprobs(lp) }] }),
          // Each choice's finish goes out as it ends, not when the last choice does.
          onFinish: (index, r) => stream.send({ ...head, choices: [{ index, text: echoOnce(index, ''), finish_reason: r.finish_reason, logprobs: null }] }),
        });
        stream.send({ ...head, choices: [], usage: usage(results) });
        stream.done();
      } catch (e) {
        stream.fail(e as Error);
      }
    },
  );
}
