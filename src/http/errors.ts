import type { FastifyError, FastifyInstance } from 'fastify';
import { errorBody, ServerError } from '../errors.js';

/** The one mapping from any failure to the contract's error shape; no stack trace ever leaves. */
export function installErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | ServerError, req, reply) => {
    if (err instanceof ServerError) {
      req.errorCode = err.code;
      if (err.status >= 500) req.log.warn({ code: err.code }, err.message);
      return reply.code(err.status).headers(err.headers).send(errorBody(err.code, err.message));
    }
    const fe = err as FastifyError;
    if (fe.validation) return reply.code(400).send(errorBody('invalid_request', fe.message));
    if (fe.code === 'FST_REQ_FILE_TOO_LARGE' || fe.code === 'FST_PARTS_LIMIT' || fe.code === 'FST_FILES_LIMIT' || fe.code === 'FST_FIELDS_LIMIT') {
      return reply.code(413).send(errorBody('payload_too_large', fe.message));
    }
    if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return reply.code(413).send(errorBody('payload_too_large', fe.message));
    if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) {
      return reply.code(fe.statusCode).send(errorBody(fe.statusCode === 415 ? 'unsupported_media_type' : 'invalid_request', fe.message));
    }
    req.log.error({ err }, 'unhandled error');
    return reply.code(500).send(errorBody('internal_error', 'internal error'));
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send(errorBody('not_found', `no route ${req.method} ${req.url.split('?')[0]}`)));
}
