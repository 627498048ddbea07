import type { FastifyInstance } from 'fastify';
import type { Inference } from '../../engine/inference.js';
import { clientGone, streamGeneration } from '../sse.js';
import { ClassifyBody, ClassifyResponse, errorResponses, GenerateBody, GenerateResponse, ScoreBody, ScoreResponse, TaskParams } from '../schemas.js';

export function inferenceRoutes(app: FastifyInstance, inference: Inference): void {
  app.post<{ Params: TaskParams; Body: GenerateBody }>(
    '/v1/tasks/:task/generate',
    { schema: { tags: ['inference'], summary: 'Generate a continuation with a task adapter', params: TaskParams, body: GenerateBody, response: { 200: GenerateResponse, ...errorResponses } } },
    async (req, reply) => {
      const { stream: streamed, ...params } = req.body;
      const signal = clientGone(reply);
      if (!streamed) return inference.generate(req.params.task, params, { signal });
      await streamGeneration(reply, (onToken) => inference.generate(req.params.task, params, { signal, onToken }));
    },
  );

  app.post<{ Params: TaskParams; Body: ClassifyBody }>(
    '/v1/tasks/:task/classify',
    { schema: { tags: ['inference'], summary: 'Score every label for one or more inputs', params: TaskParams, body: ClassifyBody, response: { 200: ClassifyResponse, ...errorResponses } } },
    async (req, reply) => inference.classify(req.params.task, req.body, { signal: clientGone(reply) }),
  );

  app.post<{ Params: TaskParams; Body: ScoreBody }>(
    '/v1/tasks/:task/score',
    { schema: { tags: ['inference'], summary: 'Log-probability of a completion after a prompt', params: TaskParams, body: ScoreBody, response: { 200: ScoreResponse, ...errorResponses } } },
    async (req, reply) => inference.score(req.params.task, req.body, { signal: clientGone(reply) }),
  );
}
