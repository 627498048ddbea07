import type { Logger } from 'pino';
import { ServerError } from '../errors.js';
import type { Executor } from '../executor/executor.js';
import type { Job } from './jobs.js';
import { Lane, type StepStats } from './lane.js';
import type { SchedulerLimits } from './scheduler.js';

export type { StepStats } from './lane.js';

export interface EngineOptions extends SchedulerLimits {
  maxQueue: number;
  batchWaitMs: number;
}

/**
 * Admission over one lane per inference worker. A job goes to the least-loaded lane and stays
 * there: its KV cache lives in that lane's worker. With one worker this is a plain batching loop.
 */
export class Engine {
  private readonly lanes: Lane[];
  private nextJobId = 1;
  private draining = false;
  private stopped = false;
  onStep: ((s: StepStats) => void) | null = null;

  constructor(executors: Executor[], private readonly opts: EngineOptions, log: Logger) {
    this.lanes = executors.map((e, i) => new Lane(e, opts, opts.batchWaitMs, log.child({ worker: i }), (s) => this.onStep?.(s)));
  }

  start(): void {
    for (const lane of this.lanes) lane.start();
  }

  get queueDepth(): number {
    return this.lanes.reduce((n, l) => n + l.scheduler.waiting, 0);
  }

  get running(): number {
    return this.lanes.reduce((n, l) => n + l.scheduler.runningCount, 0);
  }

  newJobId(): number {
    return this.nextJobId++;
  }

  /** Queues a job; past MAX_QUEUE it is refused with 429 and a hint of when to retry. */
  submit(job: Job): void {
    if (this.stopped || this.draining) throw new ServerError('shutting_down', 'the server is shutting down');
    if (this.queueDepth >= this.opts.maxQueue) {
      throw new ServerError('overloaded', `the queue is full (${this.opts.maxQueue} requests); retry shortly`, { 'retry-after': '1' });
    }
    this.lanes.reduce((best, l) => (l.load < best.load ? l : best)).enqueue(job);
  }

  private hasWork(): boolean {
    return this.lanes.some((l) => l.scheduler.hasWork());
  }

  /** Refuses new work with 503 and resolves when what was admitted has finished, or at the deadline. */
  async drain(deadlineMs: number): Promise<boolean> {
    this.draining = true;
    const until = performance.now() + deadlineMs;
    while (this.hasWork() && performance.now() < until) await new Promise((r) => setTimeout(r, 20));
    return !this.hasWork();
  }

  /** Stops every lane; jobs still held fail with 503 shutting_down. */
  async stop(): Promise<void> {
    this.stopped = true;
    const err = new ServerError('shutting_down', 'the server shut down before this request finished');
    await Promise.all(this.lanes.map((l) => l.stop(err)));
  }
}
