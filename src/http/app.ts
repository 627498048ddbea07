import multipart from '@fastify/multipart';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { MAX_TIMER_MS } from '../config.js';
import type { Registry } from '../adapters/registry.js';
import type { Engine } from '../engine/engine.js';
import { Ensembles } from '../engine/ensemble.js';
import type { Inference } from '../engine/inference.js';
import { errorBody } from '../errors.js';
import type { Metrics } from '../metrics.js';
import type { BaseModel } from '../model/base-model.js';
import { bearerGuard } from './auth.js';
import { installErrorHandler, sendError } from './errors.js';
import { registerRateLimit } from './rate-limit.js';
import { adminRoutes } from './routes/admin.js';
import { chatRoutes } from './routes/chat.js';
import { completionsRoutes } from './routes/completions.js';
import { ensembleRoutes } from './routes/ensembles.js';
import { inferenceRoutes } from './routes/inference.js';
import { modelsRoutes } from './routes/models.js';
import { operationsRoutes } from './routes/operations.js';
import { tokenizeRoutes } from './routes/tokenize.js';

export interface AppDeps {
  logger: Logger;
  inference: Inference;
  engine: Engine;
  registry: Registry;
  model: BaseModel;
  metrics: Metrics;
  bodyLimitBytes: number;
  adminToken: string;
  apiTokens: string[];
  rateLimitPerMinute: number;
  /** Fastify's trustProxy: whose X-Forwarded-For to believe for the client address (TRUST_PROXY). */
  trustProxy?: boolean | string[];
  maxAdapterBytes: number;
  /** REQUEST_TIMEOUT_MS: how long a request may take once received; a silent connection is closed a while after it. */
  requestTimeoutMs: number;
  readiness: () => { ready: boolean; details: Record<string, unknown> };
}

/** A whole request (headers and body) must arrive within this: Node's own default, which Fastify turns off. */
const RECEIVE_TIMEOUT_MS = 300_000;
/** A connection on which neither side sends a byte for REQUEST_TIMEOUT_MS plus this is closed. */
const SILENT_GRACE_MS = 30_000;

declare module 'fastify' {
  interface FastifyRequest {
    errorCode?: string;
  }
}

/**
 * Requests Node's HTTP parser refuses (headers over its limit, malformed request lines) are
 * answered on the socket, in the contract's error shape, and the connection is closed.
 */
function clientErrorHandler(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  const [status, code, message] =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? [431, 'headers_too_large', 'the request line and headers exceed the server limit (16 KiB)']
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'request_timeout', 'the request was not received in time']
        : [400, 'invalid_request', `malformed HTTP request (${err.code ?? 'parse error'})`];
  const body = JSON.stringify(errorBody(code, message));
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}

function taskExists(registry: Registry, task: string): boolean {
  return task === 'base' || registry.has(task);
}

export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.logger as unknown as FastifyBaseLogger,
    bodyLimit: deps.bodyLimitBytes,
    trustProxy: deps.trustProxy ?? false,
    // Fastify waits forever by default: a body that stops half-way held its connection open for
    // good, and kept a graceful shutdown from ending. A request still arriving after
    // RECEIVE_TIMEOUT_MS gets 408; a connection silent both ways past a request's own time limit
    // (a stalled body, a client that stopped reading a finished response) is closed, its memory freed.
    requestTimeout: RECEIVE_TIMEOUT_MS,
    connectionTimeout: Math.min(deps.requestTimeoutMs + SILENT_GRACE_MS, MAX_TIMER_MS),
    genReqId: (req) => (typeof req.headers['x-request-id'] === 'string' && req.headers['x-request-id'].length <= 128 ? req.headers['x-request-id'] : crypto.randomUUID()),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true } },
    // Errors raised before a route runs keep the contract's shape too.
    frameworkErrors: (err: FastifyError, _req, reply) => {
      const tooLong = err.code === 'FST_ERR_MAX_PARAM_LENGTH';
      return sendError(reply as FastifyReply, tooLong ? 414 : 400, tooLong ? 'uri_too_long' : 'invalid_request', tooLong ? 'a path parameter is too long (task ids have at most 64 characters)' : err.message);
    },
    clientErrorHandler,
  });
  await app.register(swagger, {
    openapi: {
      info: { title: 'softprompt-server', version: '1.0.0', description: 'Multi-task inference with hot-swappable soft prompts on one frozen base model.' },
      components: { securitySchemes: { adminToken: { type: 'http', scheme: 'bearer' }, apiToken: { type: 'http', scheme: 'bearer' } } },
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
  // Fields are admitted (a few, small) only so that admin.ts can say "send it as a file" instead of a limit error.
  // Bodies are JSON or multipart: fastify's own text/plain parser would turn any other text into a string, refused as 'body must be object' (400) instead of 415.
  app.removeContentTypeParser('text/plain');
  await app.register(multipart, { limits: { fileSize: deps.maxAdapterBytes, files: 3, fields: 3, fieldSize: 64 * 1024, parts: 6, fieldNameSize: 100, headerPairs: 100 } });
  installErrorHandler(app);
  app.addHook('onSend', async (req, reply) => {
    reply.header('x-request-id', req.id);
  });
  // A compressed body would reach the JSON parser as bytes: say what is wrong instead of "not valid JSON".
  app.addHook('onRequest', async (req, reply) => {
    const encoding = req.headers['content-encoding'];
    if (encoding && encoding.trim().toLowerCase() !== 'identity') {
      return sendError(reply, 415, 'unsupported_media_type', `Content-Encoding ${JSON.stringify(encoding.slice(0, 64))} is not supported: send the body uncompressed`);
    }
  });

  // Inference: optional API tokens, and a per-identity rate limit (src/http/rate-limit.ts).
  await app.register(async (scope) => {
    if (deps.apiTokens.length > 0) scope.addHook('onRequest', bearerGuard(deps.apiTokens, 'inference'));
    await registerRateLimit(scope, deps.rateLimitPerMinute, deps.apiTokens);
    const counted = new WeakSet<object>();
    const count = (req: FastifyRequest, status: number, code: string | undefined) => {
      if (counted.has(req)) return;
      counted.add(req);
      const named = (req.params as { task?: unknown }).task ?? (req.body as { model?: unknown } | undefined)?.model;
      // Only tasks that exist get a label of their own: made-up ids must not take the bounded label set.
      const task = typeof named === 'string' && taskExists(deps.registry, named) ? named : 'unknown';
      deps.metrics.request(task, req.routeOptions.url ?? 'unknown', status, code);
    };
    scope.addHook('onResponse', async (req, reply) => count(req, reply.statusCode, reply.statusCode >= 400 ? (req.errorCode ?? String(reply.statusCode)) : undefined));
    // A client that leaves before its response ends fires no onResponse (nor onRequestAbort, once its
    // body was read): counted as 499 client_closed, nginx's code, when the socket closes unfinished.
    scope.addHook('onRequest', async (req, reply) => {
      reply.raw.once('close', () => !reply.raw.writableFinished && count(req, 499, 'client_closed'));
    });
    inferenceRoutes(scope, deps.inference);
    completionsRoutes(scope, deps.inference);
    chatRoutes(scope, deps.inference);
    ensembleRoutes(scope, new Ensembles(deps.inference, deps.registry));
    tokenizeRoutes(scope, deps.registry, deps.model, deps.inference);
    modelsRoutes(scope, deps.registry, Math.floor(Date.now() / 1000));
  });
  adminRoutes(app, deps.registry, deps.adminToken, deps.maxAdapterBytes);
  operationsRoutes(app, deps);
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  app.get('/metrics', { schema: { tags: ['operations'], summary: 'Prometheus metrics (text format)', produces: ['text/plain'], response: { 200: { type: 'string', examples: ['sps_queue_depth 0'] } } }, logLevel: 'warn' }, async (_req, reply) =>
    reply.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics()),
  );
  return app;
}
