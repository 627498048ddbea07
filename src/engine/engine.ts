import type { Logger } from 'pino';
import { ServerError } from '../errors.js';
import { WorkerCrashedError, type Executor } from '../executor/executor.js';
import type { StepPlan, StepResult } from '../protocol.js';
import type { GenerateJob, Job, ScoreJob } from './jobs.js';
import { Scheduler, type SchedulerLimits } from './scheduler.js';

export interface EngineOptions extends SchedulerLimits {
  maxQueue: number;
  batchWaitMs: number;
}

export interface StepStats {
  plan: StepPlan;
  result: StepResult;
}

/**
 * The batching loop: scheduler.plan() → executor.step(plan) → scheduler.update(result), one step
 * at a time. Submissions only enqueue; the loop wakes when there is work.
 */
export class Engine {
  private readonly scheduler: Scheduler;
  private wake: (() => void) | null = null;
  private stopped = false;
  private loopDone: Promise<void> = Promise.resolve();
  private nextJobId = 1;
  onStep: ((s: StepStats) => void) | null = null;

  constructor(
    private readonly executor: Executor,
    private readonly opts: EngineOptions,
    private readonly log: Logger,
  ) {
    this.scheduler = new Scheduler(opts);
  }

  start(): void {
    this.loopDone = this.loop();
  }

  get queueDepth(): number {
    return this.scheduler.waiting;
  }

  get running(): number {
    return this.scheduler.runningCount;
  }

  newJobId(): number {
    return this.nextJobId++;
  }

  /** Queues a job; past MAX_QUEUE it is refused with 429 and a hint of when to retry. */
  submit(job: Job): void {
    if (this.stopped || this.draining) throw new ServerError('shutting_down', 'the server is shutting down');
    if (this.scheduler.waiting >= this.opts.maxQueue) {
      throw new ServerError('overloaded', `the queue is full (${this.opts.maxQueue} requests); retry shortly`, { 'retry-after': '1' });
    }
    this.scheduler.enqueue(job);
    this.wake?.();
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      if (!this.scheduler.hasWork()) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = null;
        // A lone request waits a moment so that the requests right behind it share its prefill.
        if (this.opts.batchWaitMs > 0 && this.scheduler.runningCount === 0) await new Promise((r) => setTimeout(r, this.opts.batchWaitMs));
        continue;
      }
      const plan = this.scheduler.plan();
      if (plan.decode.length === 0 && plan.prefill.length === 0 && plan.score.length === 0 && plan.drop.length === 0) {
        await new Promise((r) => setImmediate(r));
        continue;
      }
      let result: StepResult;
      try {
        result = await this.executor.step(plan);
      } catch (e) {
        this.failInFlight(e as Error);
        continue;
      }
      this.onStep?.({ plan, result });
      for (const ev of this.scheduler.update(result)) {
        if (ev.type === 'finished') ev.job.finish(null);
        else ev.job.done(ev.logprobs, null);
      }
    }
  }

  private failInFlight(e: Error): void {
    const crashed = e instanceof WorkerCrashedError;
    this.log.error({ err: e.message }, crashed ? 'inference worker crashed; failing its requests and restarting it' : 'step failed');
    const err = crashed ? new ServerError('worker_crashed', 'the inference worker crashed while running this request; retry it') : new ServerError('internal_error', 'inference failed');
    for (const job of this.scheduler.reset()) {
      if (job.type === 'generate') (job as GenerateJob).finish(err);
      else (job as ScoreJob).done(null, err);
    }
  }

  private draining = false;

  /** Refuses new work with 503 and resolves when what was admitted has finished, or at the deadline. */
  async drain(deadlineMs: number): Promise<boolean> {
    this.draining = true;
    const until = performance.now() + deadlineMs;
    while (this.scheduler.hasWork() && performance.now() < until) await new Promise((r) => setTimeout(r, 20));
    return !this.scheduler.hasWork();
  }

  /** Stops the loop; returns once it has finished its current step. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.loopDone;
    const err = new ServerError('shutting_down', 'the server shut down before this request finished');
    for (const job of this.scheduler.abandon()) {
      if (job.type === 'generate') job.finish(err);
      else job.done(null, err);
    }
  }
}
