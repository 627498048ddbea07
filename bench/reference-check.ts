/**
 * Every reference case through the serving path on one execution provider, against the ground truth:
 * GPT-2 (test/fixtures/reference: base and the nine adapters) and the tiny Llama/Qwen2 checkpoints
 * (test/fixtures/llama). Written to check EXECUTION_PROVIDER=webgpu on a real GPU; on the CPU it
 * must show every case within the project's bar (logits 1e-4 relative, greedy identical).
 *
 * Per case:
 * - logits: the last prompt position's logits from a prefill of the case alone and of all the
 *   model's cases in one mixed, padded batch (prefillFeeds on the graph the worker picks: the base
 *   graph for rows without BitFit, LoRA or IA3, src/executor/sessions.ts);
 *   relative error ‖a−b‖/‖b‖ and whether the top-5 ids agree;
 * - greedy: the reference's greedy tokens through the real worker (Executor → worker thread →
 *   StepRunner, KV-cache decode), once alone and once with all the model's cases in one batch;
 * - labels (GPT-2 cases with label_logprobs): the four label scores through score rows, all in one
 *   step; largest absolute difference (the bar is 1e-3).
 *
 *   node dist/bench/reference-check.js --provider cpu|webgpu [--models gpt2,tiny-llama,tiny-qwen2] [--out file.json]
 * Exit code 1 when a case misses the bar, 2 when the provider cannot run at all.
 */
import ort from 'onnxruntime-node';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { adapterParser } from '../src/adapters/format.js';
import { readAdapterFolder } from '../src/adapters/fs-store.js';
import { Executor } from '../src/executor/executor.js';
import { FeedContext } from '../src/executor/model-constants.js';
import { virtualTokens, type PrefillItem } from '../src/executor/prefill.js';
import { openSessions } from '../src/executor/sessions.js';
import { loadBaseModel, type BaseModel } from '../src/model/base-model.js';
import type { AdapterTensors, StepPlan } from '../src/protocol.js';
import { prefillLogits, refLogits, relErr, type RefCase } from './reference.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    provider: { type: 'string', default: 'cpu' },
    models: { type: 'string', default: 'gpt2,tiny-llama,tiny-qwen2' },
    threads: { type: 'string', default: String(Math.min(4, cpus().length)) },
    out: { type: 'string' },
    /** ONNX Runtime's log level for the first session: 0 verbose (node placement), 2 warnings. */
    'log-level': { type: 'string', default: '2' },
    /** Only create a session of the first model at the verbose level, run its first case once, and stop: what the provider picked and placed. */
    probe: { type: 'boolean', default: false },
    /** ONNX Runtime's graph optimization level for the check's own sessions (the worker always uses 'all'). */
    opt: { type: 'string', default: 'all' },
  },
});
const provider = args.provider as 'cpu' | 'webgpu';
if (provider !== 'cpu' && provider !== 'webgpu') throw new Error(`--provider must be cpu or webgpu, not ${provider}`);
const THREADS = Number(args.threads);
const OPT = args.opt as 'disabled' | 'basic' | 'extended' | 'all';
const LOGIT_BAR = 1e-4;
const LABEL_BAR = 1e-3;
const EOS = 0;

const ROOT = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!readdirSync(dir).includes('package.json')) dir = dirname(dir);
  return dir;
})();
const FIX = join(ROOT, 'test', 'fixtures');

/** Where each model's checkpoint, adapters and cases are. */
function suite(name: string): { dir: string; adapters: string; cases: RefCase[]; labels: string[] } {
  if (name === 'gpt2') {
    const ref = JSON.parse(readFileSync(join(FIX, 'reference', 'reference.json'), 'utf8'));
    return { dir: join(ROOT, 'models', 'demo-gpt2'), adapters: join(ROOT, 'adapters'), cases: ref.cases, labels: ref.labels };
  }
  const ref = JSON.parse(readFileSync(join(FIX, 'llama', 'reference.json'), 'utf8'));
  const dir = join(FIX, 'llama', name);
  return { dir, adapters: join(dir, 'adapters'), cases: ref.cases.filter((c: RefCase) => c.model === name), labels: [] };
}

function top5(x: Float32Array): number[] {
  return Array.from(x.keys())
    .sort((i, j) => x[j] - x[i])
    .slice(0, 5);
}

const sampling = { temperature: 0, topP: 1, topK: 0, seed: 1, logprobs: 0 };
const emptyPlan = (): StepPlan => ({ drop: [], decode: [], prefill: [], score: [], adapters: [], forget: [] });

/**
 * Greedy continuations of `rows` decoded together in one batch through the worker: each row stops
 * after its reference length or after end-of-text, as the reference did; finished rows are dropped.
 */
async function greedyBatch(ex: Executor, rows: { seq: number; adapter: AdapterTensors | null; tokens: number[]; want: number }[]): Promise<Map<number, number[]>> {
  const got = new Map(rows.map((r) => [r.seq, [] as number[]]));
  const want = new Map(rows.map((r) => [r.seq, r.want]));
  const adapters = [...new Map(rows.filter((r) => r.adapter).map((r) => [r.adapter!.key, r.adapter!])).values()];
  let plan: StepPlan = { ...emptyPlan(), reset: true, adapters, prefill: rows.map((r) => ({ seq: r.seq, adapter: r.adapter?.key ?? null, tokens: r.tokens, sampling })) };
  for (let step = 1; ; step++) {
    const res = await ex.step(plan, 60_000);
    if (res.rejected?.length) throw new Error(`rows rejected: ${JSON.stringify(res.rejected)}`);
    for (const t of res.tokens) got.get(t.seq)!.push(t.token);
    const live = res.tokens.filter((t) => t.token !== EOS && got.get(t.seq)!.length < want.get(t.seq)!);
    const drop = res.tokens.filter((t) => !live.includes(t)).map((t) => t.seq);
    if (live.length === 0) {
      await ex.step({ ...emptyPlan(), drop }, 60_000);
      return got;
    }
    plan = { ...emptyPlan(), drop, decode: live.map((t) => ({ seq: t.seq, token: t.token, step })) };
  }
}

interface Row {
  model: string;
  adapter: string;
  text: string;
  errAlone: number;
  errMixed: number;
  top5: boolean;
  greedyAlone: string;
  greedyMixed: string;
  labelDiff: number | null;
  ok: boolean;
}

/** 'ok' when identical, else where the first difference is ("3/20": at token 3 of 20). */
function compareTokens(got: number[], want: number[]): string {
  const n = Math.max(got.length, want.length);
  for (let i = 0; i < n; i++) if (got[i] !== want[i]) return `${i}/${want.length}`;
  return 'ok';
}

async function checkModel(name: string, logLevel: number): Promise<{ rows: Row[]; model: BaseModel }> {
  const s = suite(name);
  const model = loadBaseModel(s.dir, process.env.CACHE_DIR ?? mkdtempSync(join(tmpdir(), 'refcheck-graph-')));
  const parse = adapterParser(model);
  const adapters = new Map<string, AdapterTensors>();
  for (const c of s.cases) if (c.adapter && !adapters.has(c.adapter)) adapters.set(c.adapter, parse(c.adapter, readAdapterFolder(join(s.adapters, c.adapter))).tensors);
  const adapterOf = (c: RefCase) => (c.adapter ? adapters.get(c.adapter)! : null);

  // Logits: the same feeds the worker builds, through a session of the provider under test.
  const t0 = performance.now();
  const sessions = await openSessions(model, {
    executionProviders: [provider],
    graphOptimizationLevel: OPT,
    intraOpNumThreads: THREADS,
    interOpNumThreads: 1,
    logSeverityLevel: logLevel as 0 | 1 | 2 | 3 | 4,
  });
  console.error(`[${name}] ${provider} session created in ${(performance.now() - t0).toFixed(0)} ms`);
  const ctx = new FeedContext(model.tensors);
  const items: PrefillItem[] = s.cases.map((c) => ({ adapter: adapterOf(c), tokens: c.ids, logitAt: [virtualTokens(adapterOf(c), 'prompt') + c.ids.length - 1] }));
  // On the graph the worker picks: the base graph for rows without BitFit, LoRA or IA3.
  const lastLogits = async (batch: PrefillItem[]) => (await prefillLogits(sessions, ctx, batch, provider === 'webgpu')).rows;
  const alone: Float32Array[] = [];
  for (const it of items) alone.push((await lastLogits([it]))[0]);
  const mixed = await lastLogits(items);
  await sessions.session.release();
  await sessions.base?.release();

  // Greedy and label scores through the real worker on the same provider.
  const ex = new Executor({ graphPath: model.graphPath, baseGraphPath: model.baseGraphPath, base: model.tensors, provider, threads: THREADS, spin: false });
  try {
    await ex.ready();
    const rows = s.cases.map((c, i) => ({ seq: i + 1, adapter: adapterOf(c), tokens: c.ids, want: c.greedy.length }));
    const greedyAlone: number[][] = [];
    for (const r of rows) greedyAlone.push((await greedyBatch(ex, [r])).get(r.seq)!);
    const greedyMixed = await greedyBatch(ex, rows);

    const labelDiff: (number | null)[] = s.cases.map(() => null);
    const scored = s.cases.map((c, i) => ({ c, i })).filter(({ c }) => c.label_logprobs);
    if (scored.length > 0) {
      const plan = { ...emptyPlan(), reset: true, adapters: [...adapters.values()] };
      for (const { c, i } of scored) {
        const prompt = c.text.endsWith('->') ? c.text : `${c.text} ->`;
        const context = model.tokenizer.encodeSync(prompt);
        s.labels.forEach((label, k) => plan.score.push({ id: i * 100 + k, adapter: c.adapter ? adapterOf(c)!.key : null, context, targets: model.tokenizer.encodeSync(` ${label}`) }));
      }
      const res = await ex.step(plan, 60_000);
      const byId = new Map(res.scores.map((x) => [x.id, x.logprobs.reduce((a, b) => a + b, 0)]));
      for (const { c, i } of scored) {
        labelDiff[i] = Math.max(...s.labels.map((label, k) => Math.abs(byId.get(i * 100 + k)! - c.label_logprobs![label])));
      }
    }

    return {
      model,
      rows: s.cases.map((c, i) => {
        const want = refLogits(c);
        const errAlone = relErr(alone[i], want);
        const errMixed = relErr(mixed[i], want);
        const t5 = top5(alone[i]).join() === c.top5.join() && top5(mixed[i]).join() === c.top5.join();
        const gA = compareTokens(greedyAlone[i], c.greedy);
        const gM = compareTokens(greedyMixed.get(i + 1)!, c.greedy);
        const ld = labelDiff[i];
        const ok = errAlone < LOGIT_BAR && errMixed < LOGIT_BAR && gA === 'ok' && gM === 'ok' && (ld === null || ld < LABEL_BAR);
        return { model: name, adapter: c.adapter ?? 'base', text: c.text, errAlone, errMixed, top5: t5, greedyAlone: gA, greedyMixed: gM, labelDiff: ld, ok };
      }),
    };
  } finally {
    await ex.close();
  }
}

if (args.probe) {
  // The process-wide logger (ort.env) carries what the provider says when it starts (Dawn's backend and adapter).
  ort.env.logLevel = 'verbose';
  const s = suite(args.models!.split(',')[0]);
  const model = loadBaseModel(s.dir, process.env.CACHE_DIR ?? mkdtempSync(join(tmpdir(), 'refcheck-graph-')));
  const session = await ort.InferenceSession.create(model.graphPath, { executionProviders: [provider], graphOptimizationLevel: OPT, intraOpNumThreads: THREADS, logSeverityLevel: 0, logVerbosityLevel: 0 });
  const c = s.cases.find((x) => x.adapter === null)!;
  const { rows } = await prefillLogits({ session, base: null }, new FeedContext(model.tensors), [{ adapter: null, tokens: c.ids, logitAt: [c.ids.length - 1] }], provider === 'webgpu');
  const logits = rows[0];
  console.log(`probe: ${provider} session on ${model.dir} ran; base case ${JSON.stringify(c.text)} relative error ${relErr(logits, refLogits(c)).toExponential(2)}`);
  await session.release();
  process.exit(0);
}

const e = (x: number) => x.toExponential(2);
const all: Row[] = [];
const summary: (string | number)[][] = [];
const started = performance.now();
let first = true;
for (const name of args.models!.split(',')) {
  let rows: Row[];
  try {
    rows = (await checkModel(name, first ? Number(args['log-level']) : 2)).rows;
  } catch (err) {
    console.error(`[${name}] the ${provider} provider could not run: ${(err as Error).stack ?? err}`);
    process.exitCode = 2;
    continue;
  }
  first = false;
  all.push(...rows);
  console.log(`\n${name} on ${provider}: every case (greedy: 'ok', or first differing token / reference length)`);
  printTable(
    ['adapter', 'text', 'rel err alone', 'rel err mixed', 'top-5', 'greedy alone', 'greedy mixed', 'label |Δ|', 'ok'],
    rows.map((r) => [r.adapter, JSON.stringify(r.text.slice(0, 24)), e(r.errAlone), e(r.errMixed), r.top5 ? 'same' : 'DIFF', r.greedyAlone, r.greedyMixed, r.labelDiff === null ? '-' : e(r.labelDiff), r.ok ? 'ok' : 'FAIL']),
  );
  for (const adapter of [...new Set(rows.map((r) => r.adapter))]) {
    const rs = rows.filter((r) => r.adapter === adapter);
    const labels = rs.filter((r) => r.labelDiff !== null).map((r) => r.labelDiff!);
    summary.push([
      name,
      adapter,
      rs.length,
      e(Math.max(...rs.map((r) => Math.max(r.errAlone, r.errMixed)))),
      `${rs.filter((r) => r.top5).length}/${rs.length}`,
      `${rs.filter((r) => r.greedyAlone === 'ok').length}/${rs.length}`,
      `${rs.filter((r) => r.greedyMixed === 'ok').length}/${rs.length}`,
      labels.length ? e(Math.max(...labels)) : '-',
      rs.every((r) => r.ok) ? 'ok' : 'FAIL',
    ]);
  }
}
const failed = all.filter((r) => !r.ok).length;
console.log(`\nsummary on ${provider} (bar: logits < ${LOGIT_BAR} relative, greedy identical, label scores < ${LABEL_BAR}); ${((performance.now() - started) / 1000).toFixed(1)} s`);
printTable(['model', 'adapter', 'cases', 'max rel err', 'top-5 same', 'greedy alone', 'greedy mixed', 'max label |Δ|', 'verdict'], summary);
console.log(`${all.length - failed}/${all.length} cases within the bar on ${provider}; largest relative logit error ${all.length ? e(Math.max(...all.map((r) => Math.max(r.errAlone, r.errMixed)))) : '-'}`);
if (args.out) {
  mkdirSync(dirname(args.out), { recursive: true });
  writeFileSync(args.out, JSON.stringify({ date: new Date().toISOString(), provider, onnxruntime: ort.env.versions.common, node: process.version, rows: all }, null, 2));
}
if (failed > 0 && !process.exitCode) process.exitCode = 1;
