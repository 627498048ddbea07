import { Worker } from 'node:worker_threads';
import { ServerError } from '../errors.js';

export interface EncodeRequest {
  id: number;
  text: string;
  special: boolean;
}

export type EncodeReply = { id: number; ids: Int32Array } | { id: number; error: string };

/**
 * One worker thread that encodes long texts, so that BPE over a 100,000-character prompt never
 * blocks the event loop. Started on the first long text (it loads its own copy of the tokenizer);
 * it does not keep the process alive. A crashed worker fails what it held and is restarted on demand.
 */
export class EncodePool {
  private worker: Worker | null = null;
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (ids: number[]) => void; reject: (e: Error) => void }>();

  constructor(private readonly dir: string) {}

  encode(text: string, special: boolean): Promise<number[]> {
    const worker = (this.worker ??= this.start());
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.ref();
      worker.postMessage({ id, text, special } satisfies EncodeRequest);
    });
  }

  private start(): Worker {
    const worker = new Worker(new URL('./encode-worker.js', import.meta.url), { workerData: { dir: this.dir } });
    worker.unref();
    worker.on('message', (msg: EncodeReply) => {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      // Referenced only while it holds work: an idle worker never keeps the process alive.
      if (this.pending.size === 0) worker.unref();
      if ('error' in msg) p.reject(new ServerError('invalid_request', `cannot tokenize the text: ${msg.error}`));
      else p.resolve(Array.from(msg.ids));
    });
    const fail = (why: string) => {
      if (this.worker === worker) this.worker = null;
      for (const p of this.pending.values()) p.reject(new ServerError('internal_error', `the tokenizer worker ${why}`));
      this.pending.clear();
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
