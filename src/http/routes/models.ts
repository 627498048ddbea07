import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { BASE_TASK, type AdapterInfo, type Registry } from '../../adapters/registry.js';
import { errorResponses } from '../schemas.js';

const Model = Type.Object({
  id: Type.String(),
  object: Type.Literal('model'),
  created: Type.Integer({ description: 'Unix seconds: when the adapter version was uploaded (the server start for base)' }),
  owned_by: Type.String(),
  peft_type: Type.Union([Type.String(), Type.Null()], { description: "The adapter's PEFT type (PROMPT_TUNING, PREFIX_TUNING, BITFIT, LORA, …); null for base" }),
  task_kind: Type.String({ description: 'generation or classification' }),
  version: Type.String({ description: 'The adapter version a request would run on now (a content hash)' }),
});
const ModelList = Type.Object({ object: Type.Literal('list'), data: Type.Array(Model) });
const ModelParams = Type.Object({ model: Type.String({ maxLength: 128 }) });

/** OpenAI's model listing: every task is a model, `base` (the frozen model) included. */
export function modelsRoutes(app: FastifyInstance, registry: Registry, startedAt: number): void {
  const base = () => ({ id: BASE_TASK, object: 'model' as const, created: startedAt, owned_by: 'softprompt-server', peft_type: null, task_kind: 'generation', version: registry.baseVersion });
  const model = (a: AdapterInfo) => ({
    id: a.task,
    object: 'model' as const,
    created: Math.floor(Date.parse(a.created_at) / 1000),
    owned_by: 'softprompt-server',
    peft_type: a.peft_type,
    task_kind: a.kind,
    version: a.version,
  });
  app.get('/v1/models', { schema: { tags: ['openai'], summary: 'Every task as an OpenAI model, base included', response: { 200: ModelList } } }, async () => ({
    object: 'list' as const,
    data: [base(), ...registry.list().map(model)],
  }));
  app.get<{ Params: { model: string } }>(
    '/v1/models/:model',
    { schema: { tags: ['openai'], summary: 'One task as an OpenAI model', params: ModelParams, response: { 200: Model, ...errorResponses } } },
    async (req) => (req.params.model === BASE_TASK ? base() : model(await registry.describe(req.params.model))),
  );
}
