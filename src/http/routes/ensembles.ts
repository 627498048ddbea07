import { Type, type Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { Ensembles } from '../../engine/ensemble.js';
import { clientGone, streamGeneration } from '../sse.js';
import { ClassifyBody, errorResponses, GenerateBody, GenerateResponse, NumbersByKey } from '../schemas.js';

const Members = Type.Array(Type.String({ maxLength: 128 }), { minItems: 2, maxItems: 16, uniqueItems: true, description: 'The member tasks (2 to 16)' });
const Weights = Type.Array(Type.Number({ minimum: 0 }), { minItems: 2, maxItems: 16, description: 'One per task; default equal' });

const EnsembleClassifyBody = Type.Composite([Type.Object({ tasks: Members, weights: Type.Optional(Weights) }), ClassifyBody], {
  additionalProperties: false,
  examples: [{ tasks: ['pos-prefix', 'pos-bitfit'], input: ['happily', 'ocean'] }],
});
type EnsembleClassifyBody = Static<typeof EnsembleClassifyBody>;

const EnsembleGenerateBody = Type.Composite([Type.Object({ tasks: Members, weights: Type.Optional(Weights) }), GenerateBody], {
  additionalProperties: false,
  examples: [{ tasks: ['kjv-prompt', 'fortune-ptuning'], prompt: 'The way', max_tokens: 16, temperature: 0 }],
});
type EnsembleGenerateBody = Static<typeof EnsembleGenerateBody>;
const EnsembleGenerateResponse = Type.Composite([
  GenerateResponse,
  Type.Object({ tasks: Type.Array(Type.String()), adapter_versions: Type.Array(Type.String({ description: "Each member's version; task and adapter_version are the first member's" })) }),
]);

const Probabilities = NumbersByKey();
const EnsembleClassifyResponse = Type.Object({
  tasks: Type.Array(Type.String()),
  adapter_versions: Type.Array(Type.String()),
  results: Type.Array(
    Type.Object({
      label: Type.String(),
      probabilities: Probabilities,
      members: Type.Array(Type.Object({ task: Type.String(), probabilities: Probabilities })),
    }),
  ),
});

export function ensembleRoutes(app: FastifyInstance, ensembles: Ensembles): void {
  app.post<{ Body: EnsembleGenerateBody }>(
    '/v1/ensembles/generate',
    {
      schema: {
        tags: ['inference'],
        summary: 'Generate with an ensemble of task adapters: each token from the weighted mean of the members’ next-token distributions',
        body: EnsembleGenerateBody,
        response: { 200: EnsembleGenerateResponse, ...errorResponses },
      },
    },
    async (req, reply) => {
      const { stream: streamed, ...params } = req.body;
      const signal = clientGone(reply);
      if (!streamed) return ensembles.generate(params, { signal });
      await streamGeneration(reply, (onToken) => ensembles.generate(params, { signal, onToken }));
    },
  );

  app.post<{ Body: EnsembleClassifyBody }>(
    '/v1/ensembles/classify',
    {
      schema: {
        tags: ['inference'],
        summary: 'Classify with an ensemble of task adapters: the weighted mean of the members’ label probabilities',
        body: EnsembleClassifyBody,
        response: { 200: EnsembleClassifyResponse, ...errorResponses },
      },
    },
    async (req, reply) => ensembles.classify(req.body, { signal: clientGone(reply) }),
  );
}
