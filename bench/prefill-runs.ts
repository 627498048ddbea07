/**
 * A step's new rows prefilled in one padded run against runs of similar length (src/executor/prefill.ts
 * lengthRuns), at several costs per run, and packed into runs without padding (packedRuns, at most
 * --pack positions each): how much padding each saves and what its extra runs or its wider
 * attention cost. The rows are the mixed-batching benchmark's prompts (4 to 12 words), tokenized: B
 * requests arriving together, as when a wave of clients sends at once. In-process, one StepRunner
 * per variant on one session (intra-op threads: INTRA_OP_THREADS, default 1, a worker's on 2
 * cores), interleaved in rounds; each round repeats the prefill step (into an empty batch) until it
 * took --min-ms.
 *   node dist/bench/prefill-runs.js [--batches 8,32,64 --costs Infinity,8,24,64 --pack 0,64 --rounds 5]
 * (--pack 0: runs of similar length only; a variant packs with the default cost per run.)
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { FeedContext } from '../src/executor/model-constants.js';
import { PACK_POSITIONS, RUN_COST } from '../src/executor/prefill.js';
import { openSessions } from '../src/executor/sessions.js';
import { StepRunner } from '../src/executor/step-runner.js';
import { loadBaseModel } from '../src/model/base-model.js';
import type { StepPlan } from '../src/protocol.js';
import { benchPrompts, machineInfo, median } from './harness.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    batches: { type: 'string', default: '8,32,64' },
    costs: { type: 'string', default: `Infinity,8,${RUN_COST},64` },
    pack: { type: 'string', default: `0,${PACK_POSITIONS}` },
    rounds: { type: 'string', default: '5' },
    'min-ms': { type: 'string', default: '300' },
    fixtures: { type: 'string', default: 'test/fixtures' },
    out: { type: 'string', default: join(process.env.BENCH_OUT ?? 'bench/results', 'prefill-runs.json') },
  },
});
const THREADS = Number(process.env.INTRA_OP_THREADS ?? 1);
const BATCHES = args.batches!.split(',').map(Number);
const COSTS = args.costs!.split(',').map(Number);
const PACKS = args.pack!.split(',').map(Number);
/** A way to split: one padded run (cost Infinity), runs of similar length at a cost per run, or packed runs (pack > 0). */
interface Split {
  cost: number;
  pack: number;
}
const SPLITS: Split[] = [...COSTS.map((cost) => ({ cost, pack: 0 })), ...PACKS.filter((p) => p > 0).map((pack) => ({ cost: RUN_COST, pack }))];
const ROUNDS = Number(args.rounds);
const MIN_MS = Number(args['min-ms']);

const model = loadBaseModel(process.env.MODEL_DIR ?? 'models/demo-gpt2', process.env.CACHE_DIR ?? '.cache');
const sessions = await openSessions(model, { executionProviders: ['cpu'], graphOptimizationLevel: 'all', intraOpNumThreads: THREADS, interOpNumThreads: 1 });
const ctx = new FeedContext(model.tensors);
const prompts = benchPrompts(args.fixtures!, Math.max(...BATCHES)).map((p) => model.tokenizer.encodeSync(p));
const sampling = { temperature: 0, topP: 1, topK: 0, seed: 1, logprobs: 0 };
const plan = (B: number): StepPlan => ({ reset: true, drop: [], decode: [], score: [], adapters: [], forget: [], prefill: prompts.slice(0, B).map((tokens, seq) => ({ seq, adapter: null, tokens, sampling })) });
const runners = SPLITS.map((sp) => new StepRunner(sessions.session, ctx, { base: sessions.base, prefillRunCost: sp.cost, packPositions: sp.pack }));
const name = ({ cost, pack }: Split) =>
  pack > 0 ? `packed, at most ${pack} positions${pack === PACK_POSITIONS ? ' (default)' : ''}` : cost === Infinity ? 'one padded run' : `runs, cost ${cost}`;

/** One round of one variant: ms per prefill step, and (the same every time) runs and positions computed. */
async function measure(B: number, split: number) {
  const runner = runners[split];
  let ms = 0;
  let steps = 0;
  let runs = 0;
  let padded = 0;
  while (ms < MIN_MS || steps === 0) {
    const before = runner.runs.base + runner.runs.full;
    const res = await runner.step(plan(B));
    ms += res.ms.total;
    steps++;
    runs = runner.runs.base + runner.runs.full - before;
    padded = res.paddedTokens ?? 0;
  }
  return { ms: ms / steps, runs, padded };
}

const results: { batch: number; cost: number; pack: number; index: number; split: string; ms: number[]; runs: number; padded: number }[] = [];
for (const B of BATCHES) SPLITS.forEach((sp, index) => results.push({ batch: B, ...sp, index, split: name(sp), ms: [], runs: 0, padded: 0 }));
for (const B of BATCHES) await measure(B, 0); // warm-up
for (let round = 0; round < ROUNDS; round++) {
  for (const r of results) {
    const m = await measure(r.batch, r.index);
    r.ms.push(m.ms);
    r.runs = m.runs;
    r.padded = m.padded;
  }
}

const real = (B: number) => prompts.slice(0, B).reduce((n, p) => n + p.length, 0);
const oneRun = (B: number) => median(results.find((r) => r.batch === B && r.cost === Infinity && r.pack === 0)?.ms ?? [NaN]);
console.log(`\nprefill of B requests arriving together (the mixed-batching prompts, ${Math.min(...prompts.map((p) => p.length))}–${Math.max(...prompts.map((p) => p.length))} tokens), ${model.config.modelType}, ${THREADS} intra-op thread(s), median (min–max) of ${ROUNDS} interleaved rounds; ${machineInfo().cpu}, ${machineInfo().cores} cores\n`);
printTable(
  ['batch', 'split', 'runs', 'positions (real + padding)', 'ms per prefill step', 'speed-up against one run'],
  results.map((r) => [r.batch, r.split, r.runs, `${real(r.batch) + r.padded} (${real(r.batch)} + ${r.padded})`, `${median(r.ms).toFixed(2)} (${Math.min(...r.ms).toFixed(2)}–${Math.max(...r.ms).toFixed(2)})`, (oneRun(r.batch) / median(r.ms)).toFixed(2)]),
);
writeFileSync(args.out!, JSON.stringify({ date: new Date().toISOString(), machine: machineInfo(), threads: THREADS, rounds: ROUNDS, results }, null, 2));
