import type { Logger } from 'pino';
import { ServerError } from '../errors.js';
import { WorkerCrashedError, type Executor } from '../executor/executor.js';
import type { StepPlan, StepResult } from '../protocol.js';
import type { Job } from './jobs.js';
import { Scheduler, type SchedulerLimits } from './scheduler.js';

export interface StepStats {
  plan: StepPlan;
  result: StepResult;
}

/**
 * One executor and its scheduler: the batching loop plan() → executor.step(plan) → update(result),
 * one step at a time. It sleeps while there is no work and wakes on submit.
 */
export class Lane {
  readonly scheduler: Scheduler;
  private wake: (() => void) | null = null;
  private stopped = false;
  private done: Promise<void> = Promise.resolve();

  constructor(
    private readonly executor: Executor,
    limits: SchedulerLimits,
    private readonly batchWaitMs: number,
    private readonly log: Logger,
    private readonly onStep: (s: StepStats) => void,
  ) {
    this.scheduler = new Scheduler(limits);
  }

  start(): void {
    this.done = this.loop();
  }

  /** Load for placing new jobs: what waits plus what runs. */
  get load(): number {
    return this.scheduler.waiting + this.scheduler.runningCount;
  }

  enqueue(job: Job): void {
    this.scheduler.enqueue(job);
    this.wake?.();
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      if (!this.scheduler.hasWork()) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = null;
        // A lone request waits a moment so that the requests right behind it share its prefill.
        if (this.batchWaitMs > 0 && this.scheduler.runningCount === 0) await new Promise((r) => setTimeout(r, this.batchWaitMs));
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
      this.onStep({ plan, result });
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
    fail(this.scheduler.reset(), err);
  }

  /** Stops the loop after its current step; every job still held fails with `err`. */
  async stop(err: Error): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.done;
    fail(this.scheduler.abandon(), err);
  }
}

function fail(jobs: Job[], err: Error): void {
  for (const job of jobs) {
    if (job.type === 'generate') job.finish(err);
    else job.done(null, err);
  }
}
