import { Type, type Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { Registry } from '../../adapters/registry.js';
import { ServerError } from '../../errors.js';
import type { Inference } from '../../engine/inference.js';
import type { BaseModel } from '../../model/base-model.js';
import { chatMessages, Messages } from '../openai.js';
import { clientGone } from '../sse.js';
import { errorResponses } from '../schemas.js';

const TokenizeBody = Type.Object(
  {
    model: Type.String({ maxLength: 128, description: 'A task id, or base' }),
    prompt: Type.Optional(Type.String({ description: 'A prompt, as generate and /v1/completions take it (or messages)' })),
    raw: Type.Optional(Type.Boolean({ default: false, description: "false: the task's prompt_template is applied first, as generate does" })),
    messages: Type.Optional({ ...Messages, description: 'A conversation, as /v1/chat/completions takes it: its ids through the chat template (or prompt)' }),
    add_generation_prompt: Type.Optional(Type.Union([Type.Boolean(), Type.Null()], { default: true })),
    chat_template_kwargs: Type.Optional(Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Null()])),
  },
  { additionalProperties: false, examples: [{ model: 'pos-bitfit', prompt: 'happily' }] },
);
type TokenizeBody = Static<typeof TokenizeBody>;
const TokenizeResponse = Type.Object({
  model: Type.String(),
  adapter_version: Type.String(),
  tokens: Type.Array(Type.Integer()),
  count: Type.Integer(),
  virtual_tokens: Type.Integer({ description: 'Soft-prompt or prefix positions the adapter adds before the tokens' }),
  max_model_len: Type.Integer(),
});
const DetokenizeBody = Type.Object(
  { tokens: Type.Array(Type.Integer({ minimum: 0 }), { maxItems: 100_000 }) },
  { additionalProperties: false, examples: [{ tokens: [464, 3290] }] },
);
type DetokenizeBody = Static<typeof DetokenizeBody>;
const DetokenizeResponse = Type.Object({ prompt: Type.String() });

/** vLLM-style tokenizer routes: what a prompt or a conversation costs in tokens for a task (the ids generate or chat feeds), and ids back to text. */
export function tokenizeRoutes(app: FastifyInstance, registry: Registry, model: BaseModel, inference: Inference): void {
  app.post<{ Body: TokenizeBody }>(
    '/v1/tokenize',
    { schema: { tags: ['inference'], summary: "A prompt's token ids for a task (template applied unless raw), or a conversation's (through the chat template)", body: TokenizeBody, response: { 200: TokenizeResponse, ...errorResponses } } },
    async (req, reply) => {
      const b = req.body;
      if ((b.prompt === undefined) === (b.messages === undefined)) throw new ServerError('invalid_request', 'give either prompt or messages');
      const t = await registry.resolve(b.model);
      const a = t.adapter?.tensors;
      // The same ids as generate or chat feeds: Inference.promptTokens decides for both.
      const prompt = b.messages ? await inference.renderChat(b.model, chatMessages(b.messages), b.add_generation_prompt ?? true, b.chat_template_kwargs ?? undefined, clientGone(reply)) : b.prompt!;
      const tokens = await inference.promptTokens(t, { prompt, raw: b.raw, chat: b.messages !== undefined }, a ?? null);
      const virtual = a && (a.kind === 'prompt' || a.kind === 'prefix') ? a.virtualTokens : 0;
      return { model: t.task, adapter_version: t.version, tokens, count: tokens.length, virtual_tokens: virtual, max_model_len: model.config.nPositions };
    },
  );
  app.post<{ Body: DetokenizeBody }>(
    '/v1/detokenize',
    { schema: { tags: ['inference'], summary: 'Token ids back to text', body: DetokenizeBody, response: { 200: DetokenizeResponse, ...errorResponses } } },
    async (req) => {
      const bad = req.body.tokens.find((id) => id >= model.config.vocabSize);
      if (bad !== undefined) throw new ServerError('invalid_request', `token id ${bad} is outside the vocabulary (0..${model.config.vocabSize - 1})`);
      return { prompt: model.tokenizer.decode(req.body.tokens) };
    },
  );
}
