/**
 * Where a decode step's time goes, by op: ONNX Runtime's own profiler over whole worker steps
 * (the served graphs, as bench/forward.ts runs them), kernel time per op type per decode run, and
 * the MatMuls split into those over weights (one fed input: the other is an initializer) and those
 * over activations (attention over the KV cache). The profiler adds a few µs to every op, so small
 * ops weigh more here than in an unprofiled run: read it for the large items, and take step times
 * from bench/forward.ts.
 *   node dist/bench/op-profile.js [--batches 1,64 --prompt 64 --steps 32 --reps 10]
 * Any MODEL_DIR; INTRA_OP_THREADS (default 1).
 */
import ort from 'onnxruntime-node';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadBaseModel } from '../src/model/base-model.js';
import { FeedContext } from '../src/executor/model-constants.js';
import { openSessions } from '../src/executor/sessions.js';
import { StepRunner } from '../src/executor/step-runner.js';
import type { StepPlan } from '../src/protocol.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    batches: { type: 'string', default: '1,64' },
    prompt: { type: 'string', default: '64' },
    steps: { type: 'string', default: '32' },
    reps: { type: 'string', default: '10' },
    out: { type: 'string', default: join(process.env.BENCH_OUT ?? 'bench/results', 'op-profile.json') },
  },
});
const THREADS = Number(process.env.INTRA_OP_THREADS ?? 1);
const [PROMPT, STEPS, REPS] = [Number(args.prompt), Number(args.steps), Number(args.reps)];
const model = loadBaseModel(process.env.MODEL_DIR ?? 'models/demo-gpt2', process.env.CACHE_DIR ?? '.cache');
const empty = (): StepPlan => ({ drop: [], decode: [], prefill: [], score: [], adapters: [], forget: [] });
const greedy = { temperature: 0, topP: 1, topK: 0, seed: 1, logprobs: 0 };

interface ProfileEvent {
  cat: string;
  name: string;
  dur: number;
  args?: { op_name?: string; input_type_shape?: unknown[] };
}

/** Kernel µs per decode run by op type, from one profiled session over REPS × (prefill + STEPS decode steps) of B rows. */
async function profile(B: number) {
  const dir = mkdtempSync(join(tmpdir(), 'op-profile-'));
  const s = await openSessions(model, { executionProviders: ['cpu'], graphOptimizationLevel: 'all', intraOpNumThreads: THREADS, interOpNumThreads: 1, enableProfiling: true, profileFilePrefix: join(dir, 'p') });
  const tokens = Array.from({ length: PROMPT }, (_, i) => 100 + ((i * 37) % 3000));
  for (let rep = 0; rep < REPS; rep++) {
    const runner = new StepRunner(s.session, new FeedContext(model.tensors), { base: s.base });
    const plan = empty();
    plan.prefill = Array.from({ length: B }, (_, i) => ({ seq: i, adapter: null, tokens, sampling: greedy }));
    await runner.step(plan);
    for (let step = 1; step <= STEPS; step++) {
      const next = empty();
      next.decode = Array.from({ length: B }, (_, i) => ({ seq: i })); // each row feeds the token the worker chose
      await runner.step(next);
    }
  }
  // A run's node events come before its model_run event; the base graph ran every step (no adapters).
  (s.base ?? s.session).endProfiling();
  if (s.base) s.session.endProfiling();
  const file = readdirSync(dir).map((f) => join(dir, f)).sort((a, b) => readFileSync(b).length - readFileSync(a).length)[0];
  const events = JSON.parse(readFileSync(file, 'utf8')) as ProfileEvent[];
  await Promise.all([s.session.release(), s.base?.release()]);
  rmSync(dir, { recursive: true, force: true });
  const byOp = new Map<string, { us: number; nodes: number }>();
  let pending: ProfileEvent[] = [];
  let run = 0;
  let decodeRuns = 0;
  let runUs = 0;
  for (const e of events) {
    if (e.cat === 'Node' && e.name.endsWith('_kernel_time')) pending.push(e);
    if (e.cat !== 'Session' || e.name !== 'model_run') continue;
    // Run 0 of each repetition is its prefill; the first repetition warms up.
    if (run % (STEPS + 1) !== 0 && run > STEPS + 1) {
      decodeRuns++;
      runUs += e.dur;
      for (const n of pending) {
        const op = n.args!.op_name! === 'MatMul' ? (n.args!.input_type_shape!.length === 1 ? 'MatMul (weights)' : 'MatMul (activations)') : n.args!.op_name!;
        const o = byOp.get(op) ?? { us: 0, nodes: 0 };
        o.us += n.dur;
        o.nodes++;
        byOp.set(op, o);
      }
    }
    pending = [];
    run++;
  }
  const kernelUs = [...byOp.values()].reduce((n, o) => n + o.us, 0);
  const ops = [...byOp].sort((a, b) => b[1].us - a[1].us).map(([op, o]) => ({ op, nodesPerRun: +(o.nodes / decodeRuns).toFixed(1), usPerRun: +(o.us / decodeRuns).toFixed(1), share: +((100 * o.us) / kernelUs).toFixed(1) }));
  return { batch: B, decodeRuns, runUsProfiled: +(runUs / decodeRuns).toFixed(1), kernelUsPerRun: +(kernelUs / decodeRuns).toFixed(1), ops };
}

const results = [];
for (const B of args.batches!.split(',').map(Number)) {
  const r = await profile(B);
  results.push(r);
  console.log(`\nbatch ${B}: ${r.decodeRuns} decode runs, ${r.runUsProfiled} µs per run under the profiler, ${r.kernelUsPerRun} µs of it in kernels`);
  printTable(['op', 'nodes/run', 'µs/run', '% of kernel time'], r.ops.map((o) => [o.op, o.nodesPerRun, o.usPerRun, `${o.share}%`]));
}
console.log(`\n${model.dir} (${model.config.modelType}), prompt ${PROMPT} tokens then ${STEPS} decode steps, ${REPS} repetitions (the first one a warm-up), ${THREADS} intra-op thread(s), cpu: ${cpus()[0]?.model}, onnxruntime-node ${ort.env.versions.common}`);
mkdirSync(join(args.out!, '..'), { recursive: true });
writeFileSync(args.out!, JSON.stringify({ date: new Date().toISOString(), cpu: cpus()[0]?.model, cores: cpus().length, model: model.dir, threads: THREADS, prompt: PROMPT, steps: STEPS, reps: REPS, results }, null, 2));
