import ort from 'onnxruntime-node';
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import type { StepPlan } from '../protocol.js';
import { FeedContext, type BaseTensors } from './model-constants.js';
import { packPositions, prefillRunCost } from './prefill.js';
import { Reclaimer } from './reclaim.js';
import { RunGate } from './run-gate.js';
import { RowCheck } from './row-check.js';
import { openSessions, type ModelSessions } from './sessions.js';
import { StepRunner } from './step-runner.js';

/** Runs in a worker thread: session.run is synchronous native work and must not hold the event loop. */
export interface WorkerInit {
  graphPath: string;
  /** The base graph, opened beside the full one when the model has it (src/model/base-model.ts). */
  baseGraphPath: string | null;
  base: BaseTensors;
  provider: 'cpu' | 'webgpu';
  threads: number;
  spin: boolean;
  /** The soft-prompt KV cache (PROMPT_KV_CACHE); on when absent. */
  promptKv?: boolean;
  /** Forgotten adapter bytes between full collections (reclaim.ts RECLAIM_BYTES when absent; tests set 1). */
  reclaimBytes?: number;
  /** ADAPTER_CACHE_BYTES: what the LoRA stacks kept between steps may hold in all, the latest set's included; that set alone may pass it (FeedContext). */
  adapterBytes?: number;
  /** The RunGate's memory, which the Executor shares (set by the Executor for each worker it starts). */
  gate?: SharedArrayBuffer;
}

export type WorkerRequest = { id: number; plan: StepPlan } | { id: number; crash: true } | { id: number; hang: true };
export type WorkerReply = { id: number; result?: unknown; error?: string } | { ready: true; providers: string[] } | { fatal: string };

/**
 * Lowers this thread's scheduling priority (Linux: a thread id works as a pid for setpriority), so
 * that under load the event loop — health checks, streaming, admission — preempts inference. The
 * session's own threads, created after, inherit it.
 */
function yieldToEventLoop(): void {
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    if (Number.isInteger(tid)) setPriority(tid, 5);
  } catch {
    // Not Linux, or not permitted: run at normal priority.
  }
}

async function main(): Promise<void> {
  const init = workerData as WorkerInit;
  yieldToEventLoop();
  const options: ort.InferenceSession.SessionOptions = {
    executionProviders: [init.provider],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: init.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    // Spinning intra-op threads would take the cores that the event loop and the HTTP clients need.
    extra: { session: { intra_op: { allow_spinning: init.spin ? '1' : '0' }, disable_prepacking: init.base.shareWeights ? '1' : '0' } },
  };
  let sessions: ModelSessions;
  try {
    sessions = await openSessions(init, options);
  } catch (e) {
    const why = (e as Error).message;
    const hint = init.provider === 'webgpu' ? ' (EXECUTION_PROVIDER=webgpu needs a GPU adapter that WebGPU can open; use cpu where there is none)' : '';
    parentPort!.postMessage({ fatal: `cannot create the ${init.provider} session: ${why}${hint}` });
    return;
  }
  const runner = new StepRunner(sessions.session, new FeedContext(init.base, init.adapterBytes), { padEmpty: init.provider === 'webgpu', base: sessions.base, promptKv: init.promptKv, prefillRunCost: prefillRunCost(init.provider), packPositions: packPositions(init.provider), gate: init.gate && new RunGate(init.gate) });
  const rows = new RowCheck(init.base.config);
  const reclaim = new Reclaimer(init.reclaimBytes);
  parentPort!.postMessage({ ready: true, providers: [init.provider] });
  // Steps are processed one at a time, in order: the runner's KV state is sequential by nature.
  let chain = Promise.resolve();
  parentPort!.on('message', (msg: WorkerRequest) => {
    if ('crash' in msg) process.exit(3); // test hook: lets the crash-recovery path be exercised for real
    // Test hook: a hung step, for the main thread's watchdog. In the chain, as a step runs: between a
    // step's RunGate.enter() and its native call (onnxruntime-node makes it from a setImmediate) the
    // thread takes messages, and a hang there would hold the gate.
    if ('hang' in msg) return void (chain = chain.then(() => {
      for (;;);
    }));
    chain = chain.then(async () => {
      try {
        // Rows that cannot run fail alone: they leave the plan before session.run sees them.
        const { plan, rejected } = rows.filter(msg.plan);
        const result = await runner.step(plan);
        result.adapters!.collections = reclaim.collections;
        parentPort!.postMessage({ id: msg.id, result: rejected.length > 0 ? { ...result, rejected } : result });
      } catch (e) {
        parentPort!.postMessage({ id: msg.id, error: (e as Error).message });
      }
      reclaim.collect(runner.forgottenBytes);
    });
  });
}

void main();
