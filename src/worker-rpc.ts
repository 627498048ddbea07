import { parentPort, Worker, type Transferable } from 'node:worker_threads';
import { shuttingDown } from './errors.js';

/** What a worker answers for a request its handler threw on. */
export interface RpcFailure {
  message: string;
  /** The thrown error's class name (FormatError…), and its `code` when it had a string one. */
  name: string;
  code?: string;
}

type Reply<Res> = { id: number; value: Res } | { id: number; failure: RpcFailure };

export interface WorkerRpcOptions {
  workerData?: unknown;
  /** The error a call rejects with when the worker's handler threw. */
  refused: (failure: RpcFailure) => Error;
  /** The error each call it held rejects with when the worker crashed or exited. */
  crashed: (why: string) => Error;
  /**
   * Stop the worker after this long without work. An idle worker runs no garbage collection, so
   * whatever its last request referenced (a parsed adapter's files) stays alive until it works again.
   */
  idleMs?: number;
}

/**
 * One worker thread that answers requests in order, for work that must not block the event loop
 * (tokenizing a huge text, parsing a large adapter). Started on the first call; referenced only
 * while it holds work, so an idle one never keeps the process alive. A crashed worker fails what it
 * held and is started again by the next call. After close(), calls fail with 503 shutting_down.
 */
export class WorkerRpc<Req, Res> {
  private worker: Worker | null = null;
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (value: Res) => void; reject: (e: Error) => void }>();
  private idleTimer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(
    private readonly script: URL,
    private readonly options: WorkerRpcOptions,
  ) {}

  call(request: Req, transfer: Transferable[] = []): Promise<Res> {
    if (this.closed) return Promise.reject(shuttingDown());
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    const worker = (this.worker ??= this.start());
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.ref();
      worker.postMessage({ id, request }, transfer);
    });
  }

  private start(): Worker {
    const worker = new Worker(this.script, { workerData: this.options.workerData });
    worker.unref();
    worker.on('message', (msg: Reply<Res>) => {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (this.pending.size === 0) this.idle(worker);
      if ('failure' in msg) p.reject(this.options.refused(msg.failure));
      else p.resolve(msg.value);
    });
    const fail = (why: string) => {
      if (this.worker === worker) this.worker = null;
      for (const p of this.pending.values()) p.reject(this.options.crashed(why));
      this.pending.clear();
    };
    worker.on('error', (e) => fail(`failed: ${e.message}`));
    worker.on('exit', (code) => fail(`exited with code ${code}`));
    return worker;
  }

  /** No work left: unreferenced, and stopped after `idleMs`. */
  private idle(worker: Worker): void {
    worker.unref();
    if (this.options.idleMs === undefined) return;
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      if (this.worker !== worker || this.pending.size > 0) return;
      this.worker = null;
      void worker.terminate();
    }, this.options.idleMs);
    this.idleTimer.unref();
  }

  /** Stops the worker; what it held fails with 503 shutting_down, as does every later call. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    for (const p of this.pending.values()) p.reject(shuttingDown());
    this.pending.clear();
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
  }
}


/**
 * The worker's side: answers each request with what `handle` returns (and the buffers it names for
 * transfer), or, when it throws, with the error's message and code.
 */
export function serveRpc<Req, Res>(handle: (request: Req) => { value: Res; transfer?: Transferable[] }): void {
  parentPort!.on('message', ({ id, request }: { id: number; request: Req }) => {
    let reply: Reply<Res>;
    let transfer: Transferable[] = [];
    try {
      const out = handle(request);
      reply = { id, value: out.value };
      transfer = out.transfer ?? [];
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      reply = { id, failure: { message: (e as Error).message, name: (e as Error).name, ...(typeof code === 'string' && { code }) } };
    }
    parentPort!.postMessage(reply, transfer);
  });
}
