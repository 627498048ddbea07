import { ServerError } from '../errors.js';
import { tensorBytes, type AdapterTensors, type RejectedRow, type StepPlan, type StepResult, type TokenChoice } from '../protocol.js';
import { prefillWidth, type GenerateJob, type Job, type ScoreJob } from './jobs.js';
import { PrefillBudget } from './prefill-budget.js';

export interface SchedulerLimits {
  maxBatchSize: number;
  maxBatchTokens: number;
  /** Adapter keys the worker may hold before unused ones are forgotten. */
  maxWorkerAdapters: number;
  /**
   * Adapter bytes the worker may hold (the server passes ADAPTER_CACHE_BYTES): idle ones are
   * forgotten past it (counting their tensors, tensorBytes), and a job whose adapter would take the
   * running batch's past it waits for rows to finish (counting their LoRA stacks too: see admits).
   * Absent: no bound but the count.
   */
  maxWorkerAdapterBytes?: number;
  /**
   * Bytes of LoRA stack per unit of rank (src/executor/model-constants.ts loraStacks: 4 × (Σin +
   * Σout) over every adaptable module, whichever modules an adapter targets). Absent: 0.
   */
  loraStackBytesPerRank?: number;
  /**
   * 'mixed' (default): rows of any task share a batch. 'same-task': a batch holds one task at a
   * time, as servers that swap adapters per batch do; kept as a baseline for the benchmarks.
   */
  batchPolicy?: 'mixed' | 'same-task';
  /** The workers keep soft prompts' KV (PROMPT_KV_CACHE, on by default): a prompt-tuning row's prefill is its own tokens only. */
  promptKvCache?: boolean;
  /**
   * The workers' cost of one more prefill run (src/executor/prefill.ts prefillRunCost), which
   * bounds what they compute for a step's new rows (prefill-budget.ts). Absent: Infinity, every
   * new row counted at the widest one's length.
   */
  prefillRunCost?: number;
}

interface Running {
  job: GenerateJob;
  /** Tokens the row will have once every step planned so far is back: it never decodes past maxTokens. */
  planned: number;
  /** Its last token is planned, so the worker was told to drop it; it stays here until that token is back. */
  released?: boolean;
  /** An ensemble's rows, leader first (the same array on every member); absent for a plain row. */
  group?: number[];
}

interface ScoreProgress {
  job: ScoreJob;
  next: number; // first row not yet planned
  results: (number[] | undefined)[];
  outstanding: number;
}

/**
 * What a step did to each request, as plain data: the lane's output processor applies these one
 * request at a time (callbacks, stop strings, streaming), so a throw there ends one request only.
 * - token: a running row produced a token; the processor decides whether the row goes on (retire()).
 * - scored: every row of a score job is back.
 * - failed: the worker refused one of the job's rows; the job has left the scheduler.
 * - cancelled: a cancelled job left the scheduler (its client is gone or its time is up).
 */
export type SchedulerEvent =
  | { type: 'token'; seq: number; job: GenerateJob; choice: TokenChoice }
  | { type: 'scored'; job: ScoreJob; logprobs: number[][] }
  | { type: 'failed'; job: Job; error: Error }
  | { type: 'cancelled'; job: Job };

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
  /** The adapters the worker holds, least recently used first, with their bytes (tensorBytes). */
  private readonly workerAdapters = new Map<string, number>();
  private workerBytes = 0;
  private pendingDrop: number[] = [];
  /**
   * The job that waits for the batch's adapter bytes to fall (see admits): until it is admitted, no
   * other job with an adapter is, so the rows that hold the bytes finish and it cannot starve.
   */
  private byteWaiter: Job | null = null;
  private readonly batchCost = new WeakMap<AdapterTensors, number>();
  private needsReset = false;
  private nextRowId = 1;
  /** Events produced while planning (cancelled jobs), handed out with the next takeEvents(). */
  private outbox: SchedulerEvent[] = [];
  /** Queued jobs, and the rows they will take (a score job counts every row). */
  waiting = 0;
  private waitingRows = 0;
  /** Jobs dropped because they were cancelled, since the start. */
  cancelled = 0;

  private readonly softPromptCached: boolean;

  constructor(private readonly limits: SchedulerLimits) {
    this.softPromptCached = limits.promptKvCache ?? true;
  }

  enqueue(job: Job): void {
    let q = this.queues.get(job.task);
    if (!q) {
      q = [];
      this.queues.set(job.task, q);
      this.turn.push(job.task);
    }
    q.push(job);
    this.waiting++;
    this.waitingRows += jobRows(job);
  }

  get runningCount(): number {
    return this.running.size;
  }

  /** Rows queued, running and still to score: what placing a new job on this scheduler competes with. */
  get load(): number {
    let scoring = 0;
    for (const p of this.scoring.values()) scoring += p.outstanding;
    return this.waitingRows + this.running.size + scoring;
  }

  /** Events produced outside update() (cancelled jobs found while planning). */
  takeEvents(): SchedulerEvent[] {
    const out = this.outbox;
    this.outbox = [];
    return out;
  }

  private dequeued(job: Job): void {
    this.waiting--;
    this.waitingRows -= jobRows(job);
  }

  private dropCancelled(job: Job): void {
    this.cancelled++;
    this.outbox.push({ type: 'cancelled', job });
  }

  /** Whether any job is held, rows in a step in flight included: what a drain waits for. */
  get holding(): boolean {
    return this.hasWork() || this.scoring.size > 0;
  }

  /** Whether the next plan has anything to do (a score job whose rows are all in flight has not). */
  hasWork(): boolean {
    return this.waiting > 0 || this.running.size > 0 || this.pendingDrop.length > 0 || this.outbox.length > 0 || [...this.scoring.values()].some((p) => p.next < p.job.rows.length);
  }

  /** Builds the next step. Cancelled jobs are dropped here, at a step boundary. */
  plan(): StepPlan {
    const plan: StepPlan = { reset: this.needsReset, drop: this.pendingDrop, decode: [], prefill: [], score: [], adapters: [], forget: [] };
    this.pendingDrop = [];
    this.needsReset = false;
    const used = new Set<string>();
    /** What the step's adapters cost the worker: their tensors and their LoRA stacks (batchBytes). */
    let usedBytes = 0;
    const useAdapter = (a: AdapterTensors | null) => {
      if (!a || used.has(a.key)) return;
      used.add(a.key);
      usedBytes += this.batchBytes(a);
      let bytes = this.workerAdapters.get(a.key);
      if (bytes !== undefined) this.workerAdapters.delete(a.key); // set again below: to the most recently used end
      else {
        plan.adapters.push(a);
        bytes = tensorBytes(a);
        this.workerBytes += bytes;
      }
      this.workerAdapters.set(a.key, bytes);
    };
    /**
     * Whether a new job with these adapters may join: its adapters not yet in the step must fit the
     * byte budget beside those the step uses (rows running, rows admitted), or the step uses none
     * (an adapter larger than the budget runs alone). Otherwise it waits, and holds back every
     * other job with an adapter until it is admitted. The worker's memory follows the adapters of
     * one batch (their tensors, and the LoRA stacks built from them), so this is what bounds it.
     */
    const admits = (job: Job, adapters: (AdapterTensors | null)[]): boolean => {
      if (this.byteWaiter && this.byteWaiter !== job) return !adapters.some((a) => a);
      const fresh = new Set<string>();
      let bytes = 0;
      for (const a of adapters) {
        if (!a || used.has(a.key) || fresh.has(a.key)) continue;
        fresh.add(a.key);
        bytes += this.batchBytes(a);
      }
      if (fresh.size === 0 || used.size === 0 || usedBytes + bytes <= (this.limits.maxWorkerAdapterBytes ?? Infinity)) return true;
      this.byteWaiter = job;
      return false;
    };
    for (const [seq, r] of this.running) {
      if (r.job.cancelled) {
        this.running.delete(seq);
        if (!r.released) plan.drop.push(seq);
        if (!r.group || r.group[0] === seq) this.dropCancelled(r.job); // one event per job
        continue;
      }
      if (r.released) continue;
      // Planned ahead of the last result (see Lane): a row whose final token is in flight needs no more KV.
      if (r.planned >= r.job.maxTokens) {
        r.released = true;
        plan.drop.push(seq);
        continue;
      }
      r.planned++;
      plan.decode.push({ seq });
      useAdapter(r.job.adapter);
    }
    const budget = new PrefillBudget(this.limits.maxBatchTokens, this.limits.prefillRunCost ?? Infinity);
    // Score jobs in progress continue first, but each takes at most a chunk of the budget before
    // admission: a large classify cannot hold a lane while other requests wait. They fill what is
    // left after admission.
    const chunk = Math.max(1, Math.floor(this.limits.maxBatchTokens / 4));
    for (const p of [...this.scoring.values()]) {
      if (p.job.cancelled) {
        this.scoring.delete(p.job.id);
        this.forgetScoreRows(p);
        this.dropCancelled(p.job);
      } else this.planScoreRows(p, plan, budget, useAdapter, chunk);
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
          this.dequeued(j);
          this.dropCancelled(j);
          if (j === this.byteWaiter) this.byteWaiter = null;
        }
        const job = onlyTask === null || task === onlyTask ? q[0] : undefined;
        let admitted = false;
        const waits = job && !admits(job, job.type === 'generate' && job.members ? job.members.map((m) => m.adapter) : [job.adapter]);
        if (!job || waits) {
          // Nothing queued here for this turn, or it waits for the batch's adapter bytes (admits).
        } else if (job.type === 'generate' && job.members) {
          admitted = this.admitEnsemble(job, plan, slots, budget, useAdapter);
          if (admitted) slots -= job.members.length;
        } else if (job.type === 'generate') {
          const t = prefillWidth(job.adapter, job.tokens.length, this.softPromptCached);
          if (slots > 0 && budget.fits(t)) {
            budget.take(t);
            slots--;
            const seq = this.nextRowId++;
            this.running.set(seq, { job, planned: 1 });
            job.admittedAt = performance.now();
            plan.prefill.push({ seq, adapter: job.adapter?.key ?? null, tokens: job.tokens, sampling: job.sampling });
            useAdapter(job.adapter);
            admitted = true;
          }
        } else if (job.type === 'score') {
          const p: ScoreProgress = { job, next: 0, results: new Array(job.rows.length), outstanding: job.rows.length };
          if (this.planScoreRows(p, plan, budget, useAdapter, chunk) > 0 || job.rows.length === 0) {
            this.scoring.set(job.id, p);
            admitted = true;
            if (job.rows.length === 0) this.outbox.push(this.finishScore(p));
          }
        }
        if (admitted) {
          if (job === this.byteWaiter) this.byteWaiter = null;
          if (this.limits.batchPolicy === 'same-task') onlyTask = task;
          this.dequeued(q.shift()!);
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
    for (const p of this.scoring.values()) this.planScoreRows(p, plan, budget, useAdapter, Infinity);
    this.forgetUnused(plan, used);
    return plan;
  }

  /** What an adapter in the batch costs the worker: its tensors, and for a LoRA its columns of the stacks built per step (each step asks: kept per adapter object). */
  private batchBytes(a: AdapterTensors): number {
    let bytes = this.batchCost.get(a);
    if (bytes === undefined) this.batchCost.set(a, (bytes = tensorBytes(a) + (a.lora ? a.lora.rank * (this.limits.loraStackBytesPerRank ?? 0) : 0)));
    return bytes;
  }

  /** An ensemble joins whole or not at all: every member row needs a slot and the token budget. */
  private admitEnsemble(job: GenerateJob, plan: StepPlan, slots: number, budget: PrefillBudget, useAdapter: (a: AdapterTensors | null) => void): boolean {
    const members = job.members!;
    if (slots < members.length) return false;
    // The whole group, at its widest member's length (its members share a prefill run), before any of it is taken.
    const width = Math.max(...members.map((m) => prefillWidth(m.adapter, m.tokens.length, this.softPromptCached)));
    if (!budget.fits(width, members.length)) return false;
    budget.take(width, members.length);
    const group = members.map(() => this.nextRowId++);
    job.admittedAt = performance.now();
    members.forEach((m, k) => {
      this.running.set(group[k], { job, planned: 1, group });
      plan.prefill.push({ seq: group[k], adapter: m.adapter?.key ?? null, tokens: m.tokens, sampling: job.sampling, group: { leader: group[0], weight: m.weight } });
      useAdapter(m.adapter);
    });
    return true;
  }

  /** Plans rows of a score job while they fit the step's budget and `most` tokens (at least one row). */
  private planScoreRows(p: ScoreProgress, plan: StepPlan, budget: PrefillBudget, useAdapter: (a: AdapterTensors | null) => void, most: number): number {
    let planned = 0;
    let used = 0;
    while (p.next < p.job.rows.length && !p.job.cancelled) {
      const row = p.job.rows[p.next];
      // A score row with no context feeds its soft prompt again (its first target is predicted from it).
      const t = prefillWidth(p.job.adapter, row.context.length + row.targets.length, this.softPromptCached && row.context.length > 0);
      if (!budget.fits(t) || (planned > 0 && used + t > most)) break;
      budget.take(t);
      used += t;
      const id = this.nextRowId++;
      this.scoreRowOwner.set(id, { progress: p, row: p.next });
      plan.score.push({ id, adapter: p.job.adapter?.key ?? null, context: row.context, targets: row.targets });
      useAdapter(p.job.adapter);
      p.next++;
      planned++;
    }
    return planned;
  }

  /** Forgets the least recently used adapters no row of this step uses, while the worker holds too many or too many bytes. */
  private forgetUnused(plan: StepPlan, used: Set<string>): void {
    const { maxWorkerAdapters, maxWorkerAdapterBytes = Infinity } = this.limits;
    for (const [key, bytes] of this.workerAdapters) {
      if (this.workerAdapters.size <= maxWorkerAdapters && this.workerBytes <= maxWorkerAdapterBytes) return;
      if (used.has(key)) continue;
      this.workerAdapters.delete(key);
      this.workerBytes -= bytes;
      plan.forget.push(key);
    }
  }

  /**
   * Applies a step's result as plain per-request events; it calls no job callback. A row keeps
   * running until the output processor retires it.
   */
  update(result: StepResult): SchedulerEvent[] {
    const events: SchedulerEvent[] = this.takeEvents();
    for (const r of result.rejected ?? []) this.reject(r, events);
    for (const choice of result.tokens) {
      const r = this.running.get(choice.seq);
      if (!r || (r.group && r.group[0] !== choice.seq)) continue; // an ensemble's token comes under its leader
      if (r.job.cancelled) {
        this.retire(choice.seq);
        this.cancelled++;
        events.push({ type: 'cancelled', job: r.job });
        continue;
      }
      events.push({ type: 'token', seq: choice.seq, job: r.job, choice });
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

  /** A running row is done (finished, failed or cancelled): it leaves the batch at the next step. */
  retire(seq: number): void {
    for (const s of this.running.get(seq)?.group ?? [seq]) this.leave(s);
  }

  /** A row leaves: the worker drops it at the next step unless it was told to already. */
  private leave(seq: number): void {
    const r = this.running.get(seq);
    if (!r) return;
    this.running.delete(seq);
    if (!r.released) this.pendingDrop.push(seq);
  }

  /** A row the worker refused never joined its batch: its job fails, and a score job's other rows are forgotten. */
  private reject(r: RejectedRow, events: SchedulerEvent[]): void {
    const error = new ServerError(r.code === 'invalid_adapter' ? 'invalid_adapter' : 'invalid_request', `this request could not run: ${r.reason}`);
    const running = this.running.get(r.row);
    if (running) {
      // An ensemble fails whole: its other rows, already in the batch, leave it at the next step.
      for (const s of running.group ?? [r.row]) {
        if (s === r.row) this.running.delete(s);
        else this.leave(s);
      }
      events.push({ type: 'failed', job: running.job, error });
      return;
    }
    const owner = this.scoreRowOwner.get(r.row);
    if (!owner) return;
    this.scoring.delete(owner.progress.job.id);
    this.forgetScoreRows(owner.progress);
    events.push({ type: 'failed', job: owner.progress.job, error });
  }

  private forgetScoreRows(p: ScoreProgress): void {
    for (const [id, o] of this.scoreRowOwner) if (o.progress === p) this.scoreRowOwner.delete(id);
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
    this.waitingRows = 0;
    return [...this.reset(), ...queued];
  }

  /** After a worker crash: everything it held is gone. Returns the jobs that were in flight. */
  reset(): Job[] {
    const lost: Job[] = [...new Set([...this.running.values()].map((r) => r.job)), ...[...this.scoring.values()].map((p) => p.job)];
    this.running.clear();
    this.scoring.clear();
    this.scoreRowOwner.clear();
    this.workerAdapters.clear();
    this.workerBytes = 0;
    this.pendingDrop = [];
    this.byteWaiter = null;
    this.needsReset = true;
    return lost;
  }
}

export function jobRows(job: Job): number {
  return job.type === 'generate' ? (job.members?.length ?? 1) : job.rows.length;
}
