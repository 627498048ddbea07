import type { Logger } from 'pino';
import { ServerError, shuttingDown } from '../errors.js';
import type { Executor } from '../executor/executor.js';
import { rowTokens, type Job } from './jobs.js';
import { Lane, type LaneOptions, type StepStats } from './lane.js';
import { jobRows } from './scheduler.js';

export type { StepStats } from './lane.js';

export interface EngineOptions extends LaneOptions {
  maxQueue: number;
  /** Tokens one score/classify request may ask to score (inputs × labels × tokens); 413 beyond. */
  maxScoreTokens?: number;
}

/** Up to this many rows in all, work goes to one lane: a step of 2 rows costs about what 1 does. */
export const LOW_LOAD = 2;

/**
 * The lane for a job of `rows` rows. Under low load (at most LOW_LOAD rows in all lanes, the job's
 * included) the busiest lane that can still run them at once (its batch has room), so that one or
 * two sequences share one worker's steps instead of each paying steps of its own; otherwise the
 * least-loaded lane, which spreads the batch.
 */
export function place(lanes: Lane[], rows: number): Lane {
  const total = lanes.reduce((n, l) => n + l.load, 0);
  const roomy = lanes.filter((l) => l.load + rows <= l.maxBatchSize);
  if (total + rows <= LOW_LOAD && roomy.length > 0) return roomy.reduce((best, l) => (l.load > best.load ? l : best));
  return lanes.reduce((best, l) => (l.load < best.load ? l : best));
}

/**
 * Admission over one lane per inference worker. A job goes to a lane (see place) and stays
 * there: its KV cache lives in that lane's worker. With one worker this is a plain batching loop.
 */
export class Engine {
  readonly lanes: Lane[];
  private nextJobId = 1;
  private draining = false;
  private stopped = false;
  onStep: ((s: StepStats) => void) | null = null;

  constructor(executors: Executor[], private readonly opts: EngineOptions, log: Logger) {
    this.lanes = executors.map((e, i) => new Lane(e, opts, log.child({ worker: i }), (s) => this.onStep?.(s)));
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

  /** Jobs dropped because their request was cancelled (client gone, timeout, a sibling failed). */
  get cancelled(): number {
    return this.lanes.reduce((n, l) => n + l.scheduler.cancelled, 0);
  }

  /** False while no lane's worker can run (every one is backing off after failed starts). */
  get canRun(): boolean {
    return this.lanes.some((l) => l.canRun);
  }

  newJobId(): number {
    return this.nextJobId++;
  }

  /** Queues a job; see submitAll. */
  submit(job: Job): void {
    this.submitAll([job]);
  }

  /**
   * Queues the jobs of one request, all or none: a refusal (503, 429, 413) leaves nothing queued.
   * Past MAX_QUEUE the request is refused with 429 and a hint of when to retry; an empty queue
   * always takes a request, however many prompts it has.
   */
  submitAll(jobs: Job[]): void {
    if (this.stopped || this.draining) throw shuttingDown();
    const lanes = this.lanes.filter((l) => l.canRun);
    if (lanes.length === 0) throw new ServerError('worker_crashed', 'no inference worker can run at the moment; retry shortly', { 'retry-after': '1' });
    const depth = this.queueDepth;
    if (depth > 0 && depth + jobs.length > this.opts.maxQueue) {
      throw new ServerError('overloaded', `the queue is full (${this.opts.maxQueue} requests); retry shortly`, { 'retry-after': '1' });
    }
    const group = jobs.find((j) => j.type === 'generate' && j.members && j.members.length > this.opts.maxBatchSize);
    if (group) throw new ServerError('invalid_request', `an ensemble of ${(group as { members: unknown[] }).members.length} members needs that many batch rows; MAX_BATCH_SIZE is ${this.opts.maxBatchSize}`);
    const limit = this.opts.maxScoreTokens ?? Infinity;
    const scored = jobs.reduce((n, j) => n + (j.type === 'score' ? j.rows.reduce((m, r) => m + rowTokens(j.adapter, r.context.length + r.targets.length), 0) : 0), 0);
    if (scored > limit) {
      throw new ServerError('payload_too_large', `this request scores ${scored} tokens (every input with every label); the limit is ${limit} (MAX_SCORE_TOKENS): send fewer or shorter inputs or labels`);
    }
    const overlapping = this.lanes.some((l) => l.load > 0);
    for (const job of jobs) place(lanes, jobRows(job)).enqueue(job, overlapping);
  }

  /** Jobs held by any lane, including score rows in a step in flight (finding: a drain let them fail). */
  private hasWork(): boolean {
    return this.lanes.some((l) => l.scheduler.holding);
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
    const err = shuttingDown(': this request did not finish');
    await Promise.all(this.lanes.map((l) => l.stop(err)));
  }
}
