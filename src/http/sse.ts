import type { FastifyReply } from 'fastify';

/** Aborts when the connection closes before the response is complete (the client went away). */
export function clientGone(reply: FastifyReply): AbortSignal {
  const ctl = new AbortController();
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) ctl.abort();
  });
  return ctl.signal;
}

/**
 * A server-sent event stream that opens lazily: an error before the first event still gets its
 * HTTP status and JSON body; after it, the error travels as a last event.
 */
export function openEventStream(reply: FastifyReply) {
  let open = false;
  const start = () => {
    if (open) return;
    open = true;
    reply.hijack();
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-request-id': String(reply.request.id) });
  };
  return {
    send(data: unknown): void {
      start();
      reply.raw.write(`data: ${JSON.stringify(data)}\n\n`);
    },
    done(): void {
      start();
      reply.raw.end('data: [DONE]\n\n');
    },
    fail(e: Error & { code?: string }): void {
      if (!open) throw e;
      reply.raw.end(`data: ${JSON.stringify({ error: { code: e.code ?? 'internal_error', message: e.message } })}\n\n`);
    },
  };
}
