import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import type { StepPlan, StepResult } from '../protocol.js';
import { RunGate } from './run-gate.js';
import type { WorkerInit, WorkerReply } from './worker.js';

export class WorkerCrashedError extends Error {}

/** How often the gate of a worker to terminate is tried while its session.run goes on (see RunGate). */
const GATE_POLL_MS = 20;
/** How long close() waits for the session.run in flight in its worker, and in those abandoned as hung, before it goes on anyway. */
const CLOSE_WAIT_MS = 10_000;

/** Respawn delays after failed starts: 100 ms doubling, at most 30 s. */
const BACKOFF_MS = { first: 100, max: 30_000 };

/**
 * Main-thread side of the executor: posts plans to the worker and resolves their results. When the
 * worker dies, the step in flight fails with WorkerCrashedError and a fresh worker is started; its
 * KV cache is empty, so the engine fails the sequences it had running and goes on.
 * - A step past its deadline means a hung worker: its steps fail as in a crash and a fresh worker
 *   takes over at once. The old one is terminated only where that is safe (see abandon).
 * - A worker that cannot create its session is respawned with backoff; meanwhile `canRun` is
 *   false. At startup (never ready yet) a failure is final: ready() rejects with the reason.
 */
export class Executor extends EventEmitter {
  private worker!: Worker;
  /** Each worker's RunGate: it is terminated only once that is closed. */
  private readonly gates = new WeakMap<Worker, RunGate>();
  private readonly pending = new Map<number, { resolve: (r: StepResult) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private closing = false;
  private everReady = false;
  private failedStarts = 0;
  private respawnTimer: NodeJS.Timeout | null = null;
  /** Workers abandoned as hung, each with its termination (once its run has returned). */
  private readonly abandoned = new Map<Worker, Promise<void>>();
  private readyPromise!: Promise<void>;
  /** Settles when the last step posted settles: the worker runs steps in order, so a step's clock starts there. */
  private tail: Promise<unknown> = Promise.resolve();
  /** Workers started after a crash or a failed start. */
  respawns = 0;
  canRun = true;

  constructor(private readonly init: WorkerInit) {
    super();
    this.spawn();
  }

  ready(): Promise<void> {
    return this.readyPromise;
  }

  private spawn(): void {
    this.respawnTimer = null;
    const gate = new RunGate();
    const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: { ...this.init, gate: gate.buffer } });
    this.gates.set(worker, gate);
    this.worker = worker;
    let started = false;
    this.readyPromise = new Promise((resolve, reject) => {
      worker.on('message', (msg: WorkerReply) => {
        if ('ready' in msg) {
          started = true;
          this.everReady = true;
          this.failedStarts = 0;
          this.canRun = true;
          resolve();
        } else if ('fatal' in msg) reject(new Error(msg.fatal));
        else if ('id' in msg) {
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
        const why = `inference worker exited with code ${code}`;
        const failed = [...this.pending.values()];
        this.pending.clear();
        for (const p of failed) p.reject(new WorkerCrashedError(why));
        this.emit('crash', code);
        if (!this.everReady) return; // startup: the caller of ready() reports why and stops
        this.respawn(started);
      });
    });
    // Read by step() and ready(); a failure is reported there (or through 'error' on a respawn).
    this.readyPromise.catch((e: Error) => {
      if (this.everReady && this.listenerCount('error') > 0) this.emit('error', e);
    });
  }

  private respawn(wasRunning: boolean): void {
    if (!wasRunning) this.failedStarts++;
    const delay = this.failedStarts === 0 ? 0 : Math.min(BACKOFF_MS.max, BACKOFF_MS.first * 2 ** (this.failedStarts - 1));
    this.canRun = this.failedStarts === 0;
    this.respawns++;
    if (delay === 0) return this.spawn();
    this.emit('backoff', delay);
    // Backing off: steps fail at once rather than wait on a worker that may never come.
    this.readyPromise = Promise.reject(new Error(`the worker could not start ${this.failedStarts} time(s) in a row; retrying in ${delay} ms`));
    this.readyPromise.catch(() => {});
    this.respawnTimer = setTimeout(() => this.spawn(), delay);
  }

  /**
   * Runs one step; past `deadlineMs` the worker is presumed hung and is terminated and restarted.
   * Steps may be posted while others run (the lane plans one ahead): each one's deadline counts from
   * when the step before it settled, when the worker can start it.
   */
  async step(plan: StepPlan, deadlineMs = Infinity): Promise<StepResult> {
    try {
      await this.readyPromise;
    } catch (e) {
      throw new WorkerCrashedError(`the inference worker is not running: ${(e as Error).message}`);
    }
    const id = this.nextId++;
    const worker = this.worker;
    const before = this.tail;
    const result = new Promise<StepResult>((resolve, reject) => {
      let settled = false;
      let timer: NodeJS.Timeout | null = null;
      if (Number.isFinite(deadlineMs)) {
        void before.then(() => {
          if (!settled) timer = setTimeout(() => this.kill(worker, `step ${id} took longer than ${deadlineMs} ms (STEP_TIMEOUT_MS)`), deadlineMs);
        });
      }
      const done = () => {
        settled = true;
        if (timer) clearTimeout(timer);
      };
      this.pending.set(id, { resolve: (r) => (done(), resolve(r)), reject: (e) => (done(), reject(e)) });
      try {
        worker.postMessage({ id, plan });
      } catch (e) {
        // A plan that cannot be posted (a value that does not clone) fails this step only.
        this.pending.get(id)!.reject(e as Error);
        this.pending.delete(id);
      }
    });
    this.tail = result.catch(() => {});
    return result;
  }

  private kill(worker: Worker, reason: string): void {
    if (worker !== this.worker || this.closing) return;
    this.emit('hung', reason);
    this.abandon(worker, reason);
  }

  /**
   * Fails the hung worker's steps, starts a fresh worker, and terminates the old one once that is
   * safe: terminating a worker inside onnxruntime-node's session.run aborts the whole process when
   * the run returns (RunGate). A worker stuck in JavaScript is terminated at once; one inside a run
   * starts no other and is terminated when that run returns. A run that never returns leaves its
   * worker behind, unreferenced, rather than taking the server down.
   */
  private abandon(worker: Worker, reason: string): void {
    const failed = [...this.pending.values()];
    this.pending.clear();
    for (const p of failed) p.reject(new WorkerCrashedError(reason));
    this.respawns++;
    this.spawn();
    worker.unref();
    this.abandoned.set(worker, this.terminateSafely(worker).then(() => void this.abandoned.delete(worker)));
  }

  /**
   * Terminates `worker` once no session.run is in progress in it (RunGate), none starting after; past
   * `waitMs` (a run that does not return), it is terminated anyway.
   */
  private async terminateSafely(worker: Worker, waitMs = Infinity): Promise<void> {
    const gate = this.gates.get(worker)!;
    const until = performance.now() + waitMs;
    while (!gate.close() && performance.now() < until) await new Promise((r) => setTimeout(r, GATE_POLL_MS).unref());
    await worker.terminate();
  }

  /** Kills the worker as a crash would (tests use it to exercise recovery). */
  simulateCrash(): void {
    this.worker.postMessage({ id: 0, crash: true });
  }

  /** Makes the worker spin forever, as a hung native call would (tests use it to exercise the watchdog). */
  simulateHang(): void {
    this.worker.postMessage({ id: 0, hang: true });
  }

  /** Workers abandoned as hung whose native run has not returned (see abandon). */
  get hungWorkers(): number {
    return this.abandoned.size;
  }

  async close(): Promise<void> {
    this.closing = true;
    if (this.respawnTimer) clearTimeout(this.respawnTimer);
    // A step still in flight (the engine has stopped), and the runs of workers abandoned as hung, end
    // first: the process exiting would terminate their threads inside a run, which aborts it.
    let timer: NodeJS.Timeout | undefined;
    const until = new Promise((r) => (timer = setTimeout(r, CLOSE_WAIT_MS)));
    await Promise.all([this.terminateSafely(this.worker, CLOSE_WAIT_MS), Promise.race([Promise.all(this.abandoned.values()), until])]);
    clearTimeout(timer);
  }
}
