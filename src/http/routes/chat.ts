import { randomUUID } from 'node:crypto';
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { GenerateResult, Inference, TokenLogprob } from '../../engine/inference.js';
import { ServerError } from '../../errors.js';
import { chatMessages, logitBias, Messages, orNull, penalty, refuseUnsupported, Seed, StopForms, stopList, topK, VLLM_UNSUPPORTED } from '../openai.js';
import { errorResponses, FREQUENCY, PRESENCE } from '../schemas.js';
import { clientGone, openEventStream } from '../sse.js';

const maxTokens = (description?: string) => orNull(Type.Integer({ minimum: 1, maximum: 1_000_000 }), { description });
const ChatBody = Type.Object(
  {
    model: Type.String({ maxLength: 128, description: 'A task id, or base' }),
    messages: Messages,
    max_tokens: maxTokens(),
    max_completion_tokens: maxTokens("OpenAI's newer name for max_tokens (wins where both are given); without either, up to the end of the context"),
    temperature: orNull(Type.Number({ minimum: 0, maximum: 2 })),
    top_p: orNull(Type.Number({ exclusiveMinimum: 0, maximum: 1 })),
    top_k: topK,
    stop: orNull(Type.Union(StopForms)),
    seed: orNull(Seed),
    n: orNull(Type.Integer({ minimum: 1, maximum: 16 })),
    logprobs: orNull(Type.Boolean()),
    top_logprobs: orNull(Type.Integer({ minimum: 0, maximum: 20 })),
    stream: orNull(Type.Boolean()),
    stream_options: orNull(Type.Object({ include_usage: Type.Optional(Type.Boolean()) }, { additionalProperties: true })),
    logit_bias: orNull(logitBias()),
    presence_penalty: penalty(PRESENCE),
    frequency_penalty: penalty(FREQUENCY),
    chat_template_kwargs: orNull(Type.Record(Type.String(), Type.Unknown()), { description: 'Extra variables for the chat template, as vLLM takes them (enable_thinking, …)' }),
    add_generation_prompt: orNull(Type.Boolean(), { default: true, description: "Ends the prompt with the template's assistant header (false: no header; the conversation ends as the template closes it)" }),
  },
  { additionalProperties: true, examples: [{ model: 'base', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 16, temperature: 0 }] },
);
type ChatBody = Static<typeof ChatBody>;

/** Parameters that change OpenAI's output which this server does not implement, with their neutral values. */
const UNSUPPORTED: Record<string, unknown[]> = {
  tools: [[], null],
  tool_choice: ['none', null],
  functions: [[], null],
  function_call: ['none', null],
  response_format: [{ type: 'text' }, null],
  audio: [null],
  modalities: [['text'], null],
  prediction: [null],
  web_search_options: [null],
  ...VLLM_UNSUPPORTED,
};

const TopLogprob = Type.Object({ token: Type.String(), logprob: Type.Number(), bytes: Type.Array(Type.Integer()) });
const Logprobs = Type.Union([Type.Null(), Type.Object({ content: Type.Array(Type.Object({ ...TopLogprob.properties, top_logprobs: Type.Array(TopLogprob) })), refusal: Type.Null() })]);
const Usage = Type.Object({ prompt_tokens: Type.Integer(), completion_tokens: Type.Integer(), total_tokens: Type.Integer() });
const ChatResponse = Type.Object({
  id: Type.String(),
  object: Type.Literal('chat.completion'),
  created: Type.Integer(),
  model: Type.String(),
  choices: Type.Array(
    Type.Object({
      index: Type.Integer(),
      message: Type.Object({ role: Type.Literal('assistant'), content: Type.String(), refusal: Type.Null() }),
      finish_reason: Type.String(),
      logprobs: Logprobs,
    }),
  ),
  usage: Usage,
});

export function chatRoutes(app: FastifyInstance, inference: Inference): void {
  // OpenAI's chat logprobs: each token by its text and its UTF-8 bytes.
  const entry = (id: number, logprob: number) => ({ token: inference.tokenText(id), logprob, bytes: inference.tokenBytes(id) });
  const chatLogprobs = (lps: TokenLogprob[]) => ({ content: lps.map((l) => ({ ...entry(l.token_id, l.logprob), top_logprobs: l.top.map((x) => entry(x.token_id, x.logprob)) })), refusal: null });

  app.post<{ Body: ChatBody }>(
    '/v1/chat/completions',
    {
      schema: {
        tags: ['openai'],
        summary: "OpenAI-compatible chat completions through the model's chat template; model is a task id",
        body: ChatBody,
        response: { 200: ChatResponse, ...errorResponses },
      },
    },
    async (req, reply) => {
      const b = req.body;
      refuseUnsupported(b, UNSUPPORTED);
      if (typeof b.top_logprobs === 'number' && b.logprobs !== true) throw new ServerError('invalid_request', 'top_logprobs needs logprobs: true');
      const signal = clientGone(reply);
      const prompt = await inference.renderChat(b.model, chatMessages(b.messages), b.add_generation_prompt ?? true, b.chat_template_kwargs ?? undefined, signal);
      const n = b.n ?? 1;
      const params = {
        prompt,
        chat: true,
        max_tokens: b.max_completion_tokens ?? b.max_tokens ?? undefined,
        temperature: b.temperature ?? 1,
        top_p: b.top_p ?? 1,
        top_k: Math.max(0, b.top_k ?? 0),
        stop: stopList(b.stop),
        logprobs: b.logprobs ? (b.top_logprobs ?? 0) : 0,
        chosen_logprob: b.logprobs === true,
        logit_bias: b.logit_bias ?? undefined,
        presence_penalty: b.presence_penalty ?? undefined,
        frequency_penalty: b.frequency_penalty ?? undefined,
      };
      // The n choices are rows of one request, each with its own seed (seed + i where a seed is given).
      const all = Array.from({ length: n }, (_, i) => ({ ...params, seed: b.seed === undefined || b.seed === null ? undefined : b.seed + i }));
      const head = { id: `chatcmpl-${randomUUID()}`, created: Math.floor(Date.now() / 1000), model: b.model };
      const usage = (rs: GenerateResult[]) => {
        const prompt_tokens = rs[0].usage.prompt_tokens; // one conversation, however many choices
        const completion_tokens = rs.reduce((sum, r) => sum + r.usage.completion_tokens, 0);
        return { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens };
      };
      if (!b.stream) {
        const results = await inference.generateAll(b.model, all, { signal });
        return {
          ...head,
          object: 'chat.completion' as const,
          choices: results.map((r, index) => ({ index, message: { role: 'assistant' as const, content: r.text, refusal: null }, finish_reason: r.finish_reason, logprobs: r.logprobs ? chatLogprobs(r.logprobs) : null })),
          usage: usage(results),
        };
      }
      const stream = openEventStream(reply);
      // With include_usage, OpenAI's chunks carry `usage: null` until the last one, which carries it alone.
      const withUsage = b.stream_options?.include_usage === true;
      const chunk = (index: number, delta: Record<string, string>, finish_reason: string | null = null, logprobs: unknown = null) =>
        stream.send({ ...head, object: 'chat.completion.chunk', choices: [{ index, delta, logprobs, finish_reason }], ...(withUsage && { usage: null }) });
      // Each choice opens with its role, as OpenAI's first chunk does, before its first text.
      const opened = new Set<number>();
      const open = (index: number) => opened.has(index) || (opened.add(index), chunk(index, { role: 'assistant', content: '' }));
      try {
        const results = await inference.generateAll(b.model, all, {
          signal,
          onToken: (index, _tokenId, text, lp) => {
            open(index);
            // A token whose text is held back (half a character, a possible stop string) still carries its logprobs.
            if (text !== '' || lp) chunk(index, { content: text }, null, lp ? chatLogprobs([lp]) : null);
          },
          // Each choice's finish goes out as it ends, not when the last choice does.
          onFinish: (index, r) => {
            open(index);
            chunk(index, {}, r.finish_reason);
          },
        });
        if (withUsage) stream.send({ ...head, object: 'chat.completion.chunk', choices: [], usage: usage(results) });
        stream.done();
      } catch (e) {
        stream.fail(e as Error);
      }
    },
  );
}
