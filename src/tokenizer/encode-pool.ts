import { ServerError } from '../errors.js';
import { WorkerRpc } from '../worker-rpc.js';

export interface EncodeRequest {
  text: string;
  special: boolean;
}

/**
 * One worker thread that encodes long texts, so that BPE over a 100,000-character prompt never
 * blocks the event loop. Started on the first long text (it loads its own copy of the tokenizer).
 */
export class EncodePool {
  private readonly rpc: WorkerRpc<EncodeRequest, Int32Array>;

  constructor(dir: string) {
    this.rpc = new WorkerRpc(new URL('./encode-worker.js', import.meta.url), {
      workerData: { dir },
      refused: (f) => new ServerError('invalid_request', `cannot tokenize the text: ${f.message}`),
      crashed: (why) => new ServerError('internal_error', `the tokenizer worker ${why}`),
    });
  }

  async encode(text: string, special: boolean): Promise<number[]> {
    return Array.from(await this.rpc.call({ text, special }));
  }

  close(): Promise<void> {
    return this.rpc.close();
  }
}
