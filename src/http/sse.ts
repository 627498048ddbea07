import type { FastifyReply } from 'fastify';
import type { TokenLogprob } from '../engine/inference.js';

/** Aborts when the connection closes before the response is complete (the client went away). */
export function clientGone(reply: FastifyReply): AbortSignal {
  const ctl = new AbortController();
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) ctl.abort();
  });
  return ctl.signal;
}

/**
 * How far a client may fall behind its stream. Generation does not wait for the reader (its row
 * shares a batch), so a client that stopped reading would otherwise have its whole response
 * (megabytes with logprobs) buffered in this process: past this, the connection is closed, which
 * cancels the request and frees its rows, as a client that leaves does. A client that reads, but
 * slower than its stream is produced, is cut too once this far behind: about 40 s of a stream of
 * 100 tokens/s with 20 logprobs each (about 100 KB/s); 100,000 tokens of one without.
 */
export const STREAM_BUFFER_BYTES = 4 * 1024 * 1024;

/**
 * A server-sent event stream that opens lazily: an error before the first event still gets its
 * HTTP status and JSON body; after it, the error travels as a last event.
 */
export function openEventStream(reply: FastifyReply) {
  let open = false;
  /** Opens the stream on first use; false once nothing may be written (ended, gone, or answered otherwise). */
  const writable = (): boolean => {
    if (!open) {
      if (reply.sent || reply.raw.headersSent || reply.raw.destroyed) return false;
      open = true;
      reply.hijack();
      reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-request-id': String(reply.request.id) });
    }
    return !reply.raw.writableEnded && !reply.raw.destroyed;
  };
  return {
    send(data: unknown): void {
      if (!writable()) return;
      reply.raw.write(`data: ${JSON.stringify(data)}\n\n`);
      if (reply.raw.writableLength > STREAM_BUFFER_BYTES) {
        reply.log.warn({ buffered: reply.raw.writableLength }, 'the client is not reading its stream: connection closed');
        reply.raw.destroy();
      }
    },
    done(): void {
      if (writable()) reply.raw.end('data: [DONE]\n\n');
    },
    fail(e: Error & { code?: string }): void {
      if (!open && !reply.sent && !reply.raw.headersSent) throw e;
      if (open && writable()) reply.raw.end(`data: ${JSON.stringify({ error: { code: e.code ?? 'internal_error', message: e.message } })}\n\n`);
    },
  };
}

type TokenSink = (tokenId: number, text: string, logprob?: TokenLogprob) => void;

/** What the last event of a generation's stream says: how it ended, and which adapter versions served it. */
interface StreamEnd {
  finish_reason: string;
  usage: unknown;
  task?: string;
  adapter_version?: string;
  tasks?: string[];
  adapter_versions?: string[];
}

/**
 * A generation as server-sent events: one `{token_id, text}` event per token, with its `logprob`
 * and `top` alternatives when the request asks for logprobs (as the non-streamed response lists
 * them), `{text}` for text held back by stop strings; then `{finish_reason, usage}` with the task
 * and `adapter_version` (an ensemble's `tasks` and `adapter_versions`), and `[DONE]`.
 */
export async function streamGeneration(reply: FastifyReply, generate: (onToken: TokenSink) => Promise<StreamEnd>): Promise<void> {
  const stream = openEventStream(reply);
  try {
    const result = await generate((tokenId, text, lp) => stream.send(tokenId < 0 ? { text } : lp ? { token_id: tokenId, text, logprob: lp.logprob, top: lp.top } : { token_id: tokenId, text }));
    const { finish_reason, usage, task, adapter_version, tasks, adapter_versions } = result;
    stream.send({ finish_reason, usage, task, adapter_version, tasks, adapter_versions });
    stream.done();
  } catch (e) {
    stream.fail(e as Error);
  }
}
