import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Inference } from '../../engine/inference.js';
import { ClassifyBody, ClassifyResponse, errorResponses, GenerateBody, GenerateResponse, ScoreBody, ScoreResponse, TaskParams } from '../schemas.js';

/** Aborts when the connection closes before the response is complete (the client went away). */
function clientGone(reply: FastifyReply): AbortSignal {
  const ctl = new AbortController();
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) ctl.abort();
  });
  return ctl.signal;
}

export function inferenceRoutes(app: FastifyInstance, inference: Inference): void {
  app.post<{ Params: TaskParams; Body: GenerateBody }>(
    '/v1/tasks/:task/generate',
    { schema: { tags: ['inference'], summary: 'Generate a continuation with a task adapter', params: TaskParams, body: GenerateBody, response: { 200: GenerateResponse, ...errorResponses } } },
    async (req, reply) => {
      const { stream, ...params } = req.body;
      if (!stream) return inference.generate(req.params.task, params, { signal: clientGone(reply) });
      const signal = clientGone(reply);
      const send = (data: unknown) => reply.raw.write(`data: ${JSON.stringify(data)}\n\n`);
      let started = false;
      const start = () => {
        if (started) return;
        started = true;
        reply.hijack();
        reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
      };
      try {
        const result = await inference.generate(req.params.task, params, {
          signal,
          onToken: (tokenId, text) => {
            start();
            send(tokenId >= 0 ? { token_id: tokenId, text } : { text });
          },
        });
        start();
        send({ finish_reason: result.finish_reason, usage: result.usage });
        reply.raw.end('data: [DONE]\n\n');
      } catch (e) {
        if (!started) throw e; // errors before the first token still get their status code
        send({ error: { code: (e as { code?: string }).code ?? 'internal_error', message: (e as Error).message } });
        reply.raw.end();
      }
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
