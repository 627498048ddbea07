import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify';
import { errorBody, ServerError } from '../errors.js';

/**
 * Answers with the contract's error shape, and notes its code for the request metrics (sps_errors_total
 * and sps_requests_total label failures by it, whatever produced them: a handler, the schema, the framework).
 */
export function sendError(reply: FastifyReply, status: number, code: string, message: string, headers: Record<string, string> = {}): FastifyReply {
  reply.request.errorCode = code;
  return reply.code(status).headers(headers).send(errorBody(code, message));
}

/** The one mapping from any failure to the contract's error shape; no stack trace ever leaves. */
export function installErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | ServerError, req, reply) => {
    if (err instanceof ServerError) {
      if (err.status >= 500) req.log.warn({ code: err.code }, err.message);
      return sendError(reply, err.status, err.code, err.message, err.headers);
    }
    const fe = err as FastifyError;
    if (fe.validation) return sendError(reply, 400, 'invalid_request', fe.message);
    if (fe.code === 'FST_REQ_FILE_TOO_LARGE' || fe.code === 'FST_PARTS_LIMIT' || fe.code === 'FST_FILES_LIMIT' || fe.code === 'FST_FIELDS_LIMIT' || fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      return sendError(reply, 413, 'payload_too_large', fe.message);
    }
    if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) {
      return sendError(reply, fe.statusCode, fe.statusCode === 415 ? 'unsupported_media_type' : 'invalid_request', fe.message);
    }
    req.log.error({ err }, 'unhandled error');
    return sendError(reply, 500, 'internal_error', 'internal error');
  });
  app.setNotFoundHandler((req, reply) => sendError(reply, 404, 'not_found', `no route ${req.method} ${req.url.split('?')[0]}`));
}
