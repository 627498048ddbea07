import type { Logger } from 'pino';
import { ServerError } from '../errors.js';
import { WorkerCrashedError, type Executor } from '../executor/executor.js';
import type { StepPlan, StepResult } from '../protocol.js';
import type { Job } from './jobs.js';
import { applyEvent } from './output-processor.js';
import { Scheduler, type SchedulerEvent, type SchedulerLimits } from './scheduler.js';

export interface StepStats {
  plan: StepPlan;
  result: StepResult;
}

export interface LaneOptions extends SchedulerLimits {
  /**
   * How long a request that finds the lane idle waits for company before its prefill; it waits
   * only when company is likely (see Lane.shouldWait), so a lone request never pays it.
   */
  batchWaitMs: number;
  /** A step that takes longer means a hung worker: it is terminated and restarted. */
  stepTimeoutMs?: number;
}

/** Company is likely when the previous request arrived within this many BATCH_WAIT_MS… */
const COMPANY_WINDOW = 5;
/** …and some request arrived within this many ms while another was held: traffic that overlaps. */
const OVERLAP_WINDOW_MS = 1000;

/** A step posted to the worker, with its plan (for the step observer). */
interface Posted {
  plan: StepPlan;
  result: Promise<StepResult>;
}

const isEmpty = (p: StepPlan) => p.decode.length === 0 && p.prefill.length === 0 && p.score.length === 0 && p.drop.length === 0;

/**
 * One executor and its scheduler: the batching loop plan() → executor.step(plan) → update(result)
 * → output processor. It plans one step ahead: step N+1 is posted before step N's result is
 * applied (the worker feeds each row the token it chose itself), so the worker goes from step to
 * step without waiting for this thread, and this thread's share — tokens to text, stop strings,
 * streaming, the next plan — runs while the worker computes. A row that finishes at step N has
 * computed one token more in N+1, which is ignored; no row ever decodes past its max_tokens.
 * It sleeps while there is no work and wakes on submit. The loop never dies: per-request callbacks
 * run in the output processor, each in its own try/catch, and a failure of the loop itself fails
 * what it held and starts it again.
 */
export class Lane {
  readonly scheduler: Scheduler;
  private wake: (() => void) | null = null;
  private stopped = false;
  private done: Promise<void> = Promise.resolve();
  /** Times the loop itself failed and was restarted (a bug, not a request's fault). */
  restarts = 0;
  /** Times an idle lane waited BATCH_WAIT_MS for company, and times it ran a request at once. */
  readonly batchWait = { waited: 0, skipped: 0 };
  /** When the last two requests arrived (performance.now()). */
  private arrivals = [-Infinity, -Infinity];
  /** When a request last arrived here while work was held (queued, running or scoring). */
  private lastOverlap = -Infinity;
  /** The latest step's view of the worker's KV batch (rows, slots, columns, bytes). */
  kv: NonNullable<StepResult['kv']> = { rows: 0, slots: 0, capacity: 0, bytes: 0 };
  /** The latest step's view of the adapters the worker holds, and the collections it ran to free forgotten ones. */
  heldAdapters: NonNullable<StepResult['adapters']> = { held: 0, bytes: 0, collections: 0 };

  constructor(
    readonly executor: Executor,
    private readonly opts: LaneOptions,
    private readonly log: Logger,
    private readonly onStep: (s: StepStats) => void,
  ) {
    this.scheduler = new Scheduler(opts);
    executor.on('backoff', (ms: number) => log.warn({ retryInMs: ms }, 'inference worker could not start; retrying with backoff'));
  }

  start(): void {
    this.done = this.loop().catch((e: Error) => {
      this.restarts++;
      this.log.error({ err: e.message, stack: e.stack }, 'batching loop failed; failing its requests and restarting it');
      failAll(this.scheduler.reset(), new ServerError('internal_error', 'inference failed'), this.log);
      if (!this.stopped) setTimeout(() => !this.stopped && this.start(), 10);
    });
  }

  /** Load for placing new jobs: rows that wait, run or remain to be scored. */
  get load(): number {
    return this.scheduler.load;
  }

  /** Rows one step of this lane's batch may hold. */
  get maxBatchSize(): number {
    return this.opts.maxBatchSize;
  }

  /** False while its worker cannot be started (backing off): no job should be placed here. */
  get canRun(): boolean {
    return this.executor.canRun;
  }

  /**
   * `overlapping`: the job's request arrived while other work was held (the engine asks all lanes
   * once per request, before its jobs are queued, so that a request's own prompts do not count).
   */
  enqueue(job: Job, overlapping = this.scheduler.load > 0): void {
    const now = performance.now();
    if (overlapping) this.lastOverlap = now;
    this.arrivals = [this.arrivals[1], now];
    this.scheduler.enqueue(job);
    this.wake?.();
  }

  private async loop(): Promise<void> {
    let inFlight: Posted | null = null;
    let next: Posted | null = null;
    try {
      while (!this.stopped) {
        next = null;
        if (this.scheduler.hasWork()) {
          const plan = this.scheduler.plan();
          this.process(this.scheduler.takeEvents());
          if (!isEmpty(plan)) next = this.post(plan);
        }
        if (inFlight) {
          const done: Posted = inFlight;
          inFlight = null;
          if (!(await this.apply(done)) && next) {
            // The step planned on top of the failed one ran on a batch that is gone: its result is void.
            await next.result.catch(() => {});
            next = null;
          }
        } else if (!next) {
          if (this.scheduler.hasWork()) await new Promise((r) => setImmediate(r));
          else await this.idle();
        }
        inFlight = next;
        next = null;
      }
    } finally {
      // Stopping (or a failure of the loop): the worker finishes what it was given before the jobs are failed.
      for (const p of [inFlight, next]) await p?.result.catch(() => {});
    }
  }

  private post(plan: StepPlan): Posted {
    const result = this.executor.step(plan, this.opts.stepTimeoutMs);
    result.catch(() => {}); // awaited in apply(); a step voided by an earlier failure is never read
    return { plan, result };
  }

  /** Applies a step's result; false when the step failed (its rows have failed and the scheduler was reset). */
  private async apply({ plan, result: pending }: Posted): Promise<boolean> {
    let result: StepResult;
    try {
      result = await pending;
    } catch (e) {
      this.failInFlight(e as Error);
      return false;
    }
    if (result.kv) this.kv = result.kv;
    if (result.adapters) this.heldAdapters = result.adapters;
    try {
      this.onStep({ plan, result });
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, 'step observer failed');
    }
    this.process(this.scheduler.update(result));
    return true;
  }

  /** Sleeps until a job is enqueued; then waits BATCH_WAIT_MS if company is likely. */
  private async idle(): Promise<void> {
    await new Promise<void>((resolve) => (this.wake = resolve));
    this.wake = null;
    if (this.shouldWait()) {
      this.batchWait.waited++;
      await new Promise((r) => setTimeout(r, this.opts.batchWaitMs));
    }
  }

  /**
   * Whether a request that woke the idle lane should wait BATCH_WAIT_MS so that the requests right
   * behind it share its prefill. Only when company is likely: another request arrived within
   * COMPANY_WINDOW × BATCH_WAIT_MS before it, and requests have been overlapping lately. A lone
   * request runs at once, waiting would only add latency: the first of a quiet spell, and every
   * request of one client that sends the next as soon as the previous is answered (close together,
   * but never overlapping).
   */
  private shouldWait(): boolean {
    const wait = this.opts.batchWaitMs;
    if (wait <= 0 || this.scheduler.runningCount > 0) return false;
    const [before, last] = this.arrivals;
    if (last - before <= COMPANY_WINDOW * wait && last - this.lastOverlap <= OVERLAP_WINDOW_MS) return true;
    this.batchWait.skipped++;
    return false;
  }

  /** The output processor's side: one request at a time, so a throw ends that request only. */
  private process(events: SchedulerEvent[]): void {
    for (const ev of events) applyEvent(ev, this.scheduler, this.log);
  }

  private failInFlight(e: Error): void {
    const crashed = e instanceof WorkerCrashedError;
    this.kv = { rows: 0, slots: 0, capacity: 0, bytes: 0 }; // the next plan resets the worker's batch
    this.log.error({ err: e.message }, crashed ? 'inference worker crashed; failing its requests and restarting it' : 'step failed');
    const err = crashed ? new ServerError('worker_crashed', 'the inference worker crashed while running this request; retry it') : new ServerError('internal_error', 'inference failed');
    failAll(this.scheduler.reset(), err, this.log);
  }

  /** Stops the loop after its current step; every job still held fails with `err`. */
  async stop(err: Error): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.done;
    failAll(this.scheduler.abandon(), err, this.log);
  }
}

function failAll(jobs: Job[], err: Error, log: Logger): void {
  for (const job of jobs) applyEvent({ type: 'failed', job, error: err }, null, log);
}
