import type { AdapterTensors, StepPlan, StepResult } from '../protocol.js';
import { rowTokens, type GenerateJob, type Job, type ScoreJob } from './jobs.js';

export interface SchedulerLimits {
  maxBatchSize: number;
  maxBatchTokens: number;
  /** Adapter keys the worker may hold before unused ones are forgotten. */
  maxWorkerAdapters: number;
  /**
   * 'mixed' (default): rows of any task share a batch. 'same-task': a batch holds one task at a
   * time, as servers that swap adapters per batch do; kept as a baseline for the benchmarks.
   */
  batchPolicy?: 'mixed' | 'same-task';
}

interface Running {
  job: GenerateJob;
  last: number; // token to feed at the next decode
  generated: number;
}

interface ScoreProgress {
  job: ScoreJob;
  next: number; // first row not yet planned
  results: (number[] | undefined)[];
  outstanding: number;
}

export type SchedulerEvent =
  | { type: 'finished'; job: GenerateJob }
  | { type: 'scored'; job: ScoreJob; logprobs: number[][] };

/**
 * Pure scheduling state: which jobs wait, which sequences run, what the next step does. It never
 * touches a tensor or ONNX Runtime, so its tests drive it with hand-written StepResults.
 *
 * Fairness: admission is round-robin over tasks, one job per task per turn, so a task with
 * thousands of queued requests cannot starve a task with one; within a task, FIFO.
 */
export class Scheduler {
  private readonly queues = new Map<string, Job[]>();
  private readonly turn: string[] = []; // tasks with queued jobs, in round-robin order
  private readonly running = new Map<number, Running>();
  private readonly scoring = new Map<number, ScoreProgress>();
  private readonly scoreRowOwner = new Map<number, { progress: ScoreProgress; row: number }>();
  private readonly workerAdapters = new Map<string, number>(); // key → last step that used it
  private pendingDrop: number[] = [];
  private needsReset = false;
  private nextRowId = 1;
  private steps = 0;
  waiting = 0;

  constructor(private readonly limits: SchedulerLimits) {}

  enqueue(job: Job): void {
    let q = this.queues.get(job.task);
    if (!q) {
      q = [];
      this.queues.set(job.task, q);
      this.turn.push(job.task);
    }
    q.push(job);
    this.waiting++;
  }

  get runningCount(): number {
    return this.running.size;
  }

  hasWork(): boolean {
    return this.waiting > 0 || this.running.size > 0 || this.pendingDrop.length > 0 || [...this.scoring.values()].some((p) => p.next < p.job.rows.length);
  }

  /** Builds the next step. Cancelled jobs are dropped here, at a step boundary. */
  plan(): StepPlan {
    this.steps++;
    const plan: StepPlan = { reset: this.needsReset, drop: this.pendingDrop, decode: [], prefill: [], score: [], adapters: [], forget: [] };
    this.pendingDrop = [];
    this.needsReset = false;
    const used = new Set<string>();
    const useAdapter = (a: AdapterTensors | null) => {
      if (!a) return;
      used.add(a.key);
      if (!this.workerAdapters.has(a.key)) plan.adapters.push(a);
      this.workerAdapters.set(a.key, this.steps);
    };
    for (const [seq, r] of this.running) {
      if (r.job.cancelled) {
        this.running.delete(seq);
        plan.drop.push(seq);
        r.job.finish(null);
        continue;
      }
      plan.decode.push({ seq, token: r.last, step: r.generated });
      useAdapter(r.job.adapter);
    }
    let tokens = 0;
    let rows = 0;
    let widest = 0;
    // Padded cost: the worker pads every prefill row to the longest one.
    const fits = (t: number) => rows === 0 || (rows + 1) * Math.max(widest, t) <= this.limits.maxBatchTokens;
    const take = (t: number) => {
      rows++;
      widest = Math.max(widest, t);
      tokens += t;
    };
    // Score jobs in progress continue first: they were admitted earlier.
    for (const p of [...this.scoring.values()]) {
      if (p.job.cancelled) {
        this.scoring.delete(p.job.id);
        p.job.done(null, null);
      } else this.planScoreRows(p, plan, fits, take, useAdapter);
    }
    let slots = this.limits.maxBatchSize - this.running.size;
    // same-task: while rows of one task run, only that task may join them.
    let onlyTask = this.limits.batchPolicy === 'same-task' ? (this.running.values().next().value?.job.task ?? null) : null;
    let progressed = true;
    while (this.turn.length > 0 && progressed) {
      progressed = false;
      for (let i = 0; i < this.turn.length; i++) {
        const task = this.turn[0];
        const q = this.queues.get(task)!;
        while (q.length > 0 && q[0].cancelled) {
          const j = q.shift()!;
          this.waiting--;
          if (j.type === 'generate') j.finish(null);
          else j.done(null, null);
        }
        const job = onlyTask === null || task === onlyTask ? q[0] : undefined;
        let admitted = false;
        if (job && job.type === 'generate') {
          const t = rowTokens(job.adapter, job.tokens.length);
          if (slots > 0 && fits(t)) {
            take(t);
            slots--;
            const seq = this.nextRowId++;
            this.running.set(seq, { job, last: -1, generated: 0 });
            job.admittedAt = performance.now();
            plan.prefill.push({ seq, adapter: job.adapter?.key ?? null, tokens: job.tokens, sampling: job.sampling });
            useAdapter(job.adapter);
            admitted = true;
          }
        } else if (job && job.type === 'score') {
          const p: ScoreProgress = { job, next: 0, results: new Array(job.rows.length), outstanding: job.rows.length };
          if (this.planScoreRows(p, plan, fits, take, useAdapter) > 0 || job.rows.length === 0) {
            this.scoring.set(job.id, p);
            admitted = true;
            if (job.rows.length === 0) this.finishScore(p);
          }
        }
        if (admitted) {
          if (this.limits.batchPolicy === 'same-task') onlyTask = task;
          q.shift();
          this.waiting--;
          progressed = true;
        }
        // Rotate: the task that just had its turn goes to the back.
        this.turn.push(this.turn.shift()!);
        if (q.length === 0) {
          this.queues.delete(task);
          this.turn.splice(this.turn.lastIndexOf(task), 1);
          i--;
        }
      }
    }
    this.forgetUnused(plan, used);
    return plan;
  }

  private planScoreRows(p: ScoreProgress, plan: StepPlan, fits: (t: number) => boolean, take: (t: number) => void, useAdapter: (a: AdapterTensors | null) => void): number {
    let planned = 0;
    while (p.next < p.job.rows.length && !p.job.cancelled) {
      const row = p.job.rows[p.next];
      const t = rowTokens(p.job.adapter, row.context.length + row.targets.length);
      if (!fits(t)) break;
      take(t);
      const id = this.nextRowId++;
      this.scoreRowOwner.set(id, { progress: p, row: p.next });
      plan.score.push({ id, adapter: p.job.adapter?.key ?? null, context: row.context, targets: row.targets });
      useAdapter(p.job.adapter);
      p.next++;
      planned++;
    }
    return planned;
  }

  private forgetUnused(plan: StepPlan, used: Set<string>): void {
    if (this.workerAdapters.size <= this.limits.maxWorkerAdapters) return;
    const idle = [...this.workerAdapters].filter(([k]) => !used.has(k)).sort((a, b) => a[1] - b[1]);
    for (const [key] of idle.slice(0, this.workerAdapters.size - this.limits.maxWorkerAdapters)) {
      this.workerAdapters.delete(key);
      plan.forget.push(key);
    }
  }

  /** Applies a step's result: feeds each token to its job and retires what finished. */
  update(result: StepResult): SchedulerEvent[] {
    const events: SchedulerEvent[] = [];
    for (const choice of result.tokens) {
      const r = this.running.get(choice.seq);
      if (!r) continue;
      r.last = choice.token;
      r.generated++;
      const verdict = r.job.cancelled ? 'stop' : r.job.onToken(choice);
      if (verdict !== 'continue') {
        this.running.delete(choice.seq);
        this.pendingDrop.push(choice.seq);
        events.push({ type: 'finished', job: r.job });
      }
    }
    for (const s of result.scores) {
      const owner = this.scoreRowOwner.get(s.id);
      if (!owner) continue;
      this.scoreRowOwner.delete(s.id);
      owner.progress.results[owner.row] = s.logprobs;
      if (--owner.progress.outstanding === 0) events.push(this.finishScore(owner.progress));
    }
    return events;
  }

  private finishScore(p: ScoreProgress): SchedulerEvent {
    this.scoring.delete(p.job.id);
    return { type: 'scored', job: p.job, logprobs: p.results as number[][] };
  }

  /** At shutdown: every job, queued or in flight, leaves the scheduler. */
  abandon(): Job[] {
    const queued = [...this.queues.values()].flat();
    this.queues.clear();
    this.turn.length = 0;
    this.waiting = 0;
    return [...this.reset(), ...queued];
  }

  /** After a worker crash: everything it held is gone. Returns the jobs that were in flight. */
  reset(): Job[] {
    const lost: Job[] = [...[...this.running.values()].map((r) => r.job), ...[...this.scoring.values()].map((p) => p.job)];
    this.running.clear();
    this.scoring.clear();
    this.scoreRowOwner.clear();
    this.workerAdapters.clear();
    this.pendingDrop = [];
    this.needsReset = true;
    return lost;
  }
}
