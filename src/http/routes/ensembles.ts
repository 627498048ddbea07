import { Type, type Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { Ensembles } from '../../engine/ensemble.js';
import { clientGone } from '../sse.js';
import { ClassifyBody, errorResponses } from '../schemas.js';

const Members = Type.Array(Type.String({ maxLength: 128 }), { minItems: 2, maxItems: 16, uniqueItems: true, description: 'The member tasks (2 to 16)' });
const Weights = Type.Array(Type.Number({ minimum: 0 }), { minItems: 2, maxItems: 16, description: 'One per task; default equal' });

const EnsembleClassifyBody = Type.Composite([Type.Object({ tasks: Members, weights: Type.Optional(Weights) }), ClassifyBody], {
  additionalProperties: false,
  examples: [{ tasks: ['pos-prefix', 'pos-bitfit'], input: ['happily', 'ocean'] }],
});
type EnsembleClassifyBody = Static<typeof EnsembleClassifyBody>;

const Probabilities = Type.Record(Type.String(), Type.Number());
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
