import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import type { StepPlan, StepResult } from '../protocol.js';
import type { WorkerInit, WorkerReply } from './worker.js';

export class WorkerCrashedError extends Error {}

/**
 * Main-thread side of the executor: posts plans to the worker and resolves their results. When the
 * worker dies, the step in flight fails with WorkerCrashedError and a fresh worker is started; its
 * KV cache is empty, so the engine fails the sequences it had running and goes on.
 */
export class Executor extends EventEmitter {
  private worker!: Worker;
  private readonly pending = new Map<number, { resolve: (r: StepResult) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private closing = false;
  private readyPromise!: Promise<void>;

  constructor(private readonly init: WorkerInit) {
    super();
    this.spawn();
  }

  ready(): Promise<void> {
    return this.readyPromise;
  }

  private spawn(): void {
    const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: this.init });
    this.worker = worker;
    this.readyPromise = new Promise((resolve, reject) => {
      worker.on('message', (msg: WorkerReply) => {
        if ('ready' in msg) resolve();
        else if ('fatal' in msg) reject(new Error(msg.fatal));
        else {
          const p = this.pending.get(msg.id);
          this.pending.delete(msg.id);
          if (msg.error !== undefined) p?.reject(new Error(msg.error));
          else p?.resolve(msg.result as StepResult);
        }
      });
      worker.on('error', (e) => reject(e));
      worker.on('exit', (code) => {
        reject(new Error(`worker exited with code ${code} before it was ready`));
        if (this.closing || worker !== this.worker) return;
        const failed = [...this.pending.values()];
        this.pending.clear();
        for (const p of failed) p.reject(new WorkerCrashedError(`inference worker exited with code ${code}`));
        this.emit('crash', code);
        this.spawn();
        this.readyPromise.catch((e) => this.emit('error', e));
      });
    });
  }

  async step(plan: StepPlan): Promise<StepResult> {
    await this.readyPromise;
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, plan });
    });
  }

  /** Kills the worker as a crash would (tests use it to exercise recovery). */
  simulateCrash(): void {
    this.worker.postMessage({ id: 0, crash: true });
  }

  async close(): Promise<void> {
    this.closing = true;
    await this.worker.terminate();
  }
}
