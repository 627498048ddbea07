import { Worker } from 'node:worker_threads';
import { ServerError } from '../errors.js';

export type EncodeRequest = { id: number; text: string; special: boolean } | { id: number; template: string; context: Record<string, unknown> };

export type EncodeReply = { id: number; ids: Int32Array } | { id: number; text: string } | { id: number; error: string };

/** A render that takes longer is stopped (its worker restarted): real templates take milliseconds. */
export const RENDER_TIMEOUT_MS = 5000;
/** The worker's heap: a tokenizer and its texts need far less; a runaway template must not take the process's memory. */
const WORKER_HEAP_MB = 2048;

/**
 * One worker thread that encodes long texts, so that BPE over a 100,000-character prompt never
 * blocks the event loop, and renders chat templates (src/tokenizer/chat-template.ts). Started on
 * first use (it loads its own copy of the tokenizer); it does not keep the process alive. A
 * crashed or stopped worker fails what it held, and the next request starts a new one.
 */
export class EncodePool {
  private worker: Worker | null = null;
  private nextId = 0;
  /** Requests in flight, each with the worker it was sent to. */
  private readonly pending = new Map<number, { worker: Worker; resolve: (reply: EncodeReply) => void; reject: (e: Error) => void }>();

  constructor(private readonly dir: string) {}

  async encode(text: string, special: boolean): Promise<number[]> {
    const reply = await this.send({ id: this.nextId++, text, special });
    if ('error' in reply) throw new ServerError('invalid_request', `cannot tokenize the text: ${reply.error}`);
    return Array.from((reply as { ids: Int32Array }).ids);
  }

  /** A Jinja template's text over `context`; a template's own error, or a render past RENDER_TIMEOUT_MS, is the request's fault (400). */
  async render(template: string, context: Record<string, unknown>): Promise<string> {
    const reply = await this.send({ id: this.nextId++, template, context }, RENDER_TIMEOUT_MS);
    if ('error' in reply) throw new ServerError('invalid_request', `the chat template refused the messages: ${reply.error}`);
    return (reply as { text: string }).text;
  }

  /** `timeoutMs`: past it the request fails and its worker is stopped (a template is a program: one may not end). */
  private send(request: EncodeRequest, timeoutMs?: number): Promise<EncodeReply> {
    const worker = (this.worker ??= this.start());
    return new Promise((resolve, reject) => {
      const timer =
        timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              this.settle(request.id)?.reject(new ServerError('invalid_request', `the chat template did not finish rendering within ${timeoutMs} ms`));
              if (this.worker === worker) this.worker = null;
              void worker.terminate();
            }, timeoutMs);
      this.pending.set(request.id, { worker, resolve: (r) => (clearTimeout(timer), resolve(r)), reject: (e) => (clearTimeout(timer), reject(e)) });
      worker.ref();
      worker.postMessage(request);
    });
  }

  /** Takes a request out of flight; its worker is referenced only while it holds work, so an idle one never keeps the process alive. */
  private settle(id: number) {
    const p = this.pending.get(id);
    if (!p) return undefined;
    this.pending.delete(id);
    if (![...this.pending.values()].some((q) => q.worker === p.worker)) p.worker.unref();
    return p;
  }

  private start(): Worker {
    const worker = new Worker(new URL('./encode-worker.js', import.meta.url), { workerData: { dir: this.dir }, resourceLimits: { maxOldGenerationSizeMb: WORKER_HEAP_MB } });
    worker.unref();
    worker.on('message', (msg: EncodeReply) => this.settle(msg.id)?.resolve(msg));
    const fail = (why: string) => {
      if (this.worker === worker) this.worker = null;
      for (const [id, p] of this.pending) if (p.worker === worker) this.settle(id)?.reject(new ServerError('internal_error', `the tokenizer worker ${why}`));
    };
    worker.on('error', (e) => fail(`failed: ${e.message}`));
    worker.on('exit', (code) => fail(`exited with code ${code}`));
    return worker;
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
  }
}
