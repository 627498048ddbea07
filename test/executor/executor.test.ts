import { copyFileSync, existsSync, mkdtempSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import t from 'tap';
import { Executor, WorkerCrashedError } from '../../src/executor/executor.js';
import { loadBaseModel } from '../../src/model/base-model.js';
import type { AdapterTensors, StepPlan } from '../../src/protocol.js';
import { ROOT } from '../helpers.js';

const model = loadBaseModel(join(ROOT, 'models', 'demo-gpt2'), join(ROOT, '.cache'));
const { vocabSize: V, hidden: D } = model.config;
const sampling = { temperature: 0, topP: 1, topK: 0, seed: 1, logprobs: 0 };
const empty: StepPlan = { drop: [], decode: [], prefill: [], score: [], adapters: [], forget: [] };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function executor(graphPath = model.graphPath, baseGraphPath = model.baseGraphPath): Executor {
  const e = new Executor({ graphPath, baseGraphPath, base: model.tensors, provider: 'cpu', threads: 1, spin: false });
  t.teardown(() => e.close());
  return e;
}

t.test('a step with broken rows runs the good ones and reports the others (finding 5)', async (t) => {
  const e = executor();
  await e.ready();
  const good: AdapterTensors = { key: 'good', kind: 'prompt', virtualTokens: 2, embeddings: new Float32Array(2 * D).fill(0.01) };
  const broken: AdapterTensors = { key: 'broken', kind: 'prompt', virtualTokens: 2, embeddings: new Float32Array(D) };
  const prompt = model.tokenizer.encodeSync('In the beginning');
  const r1 = await e.step({
    ...empty,
    adapters: [good, broken],
    prefill: [
      { seq: 1, adapter: null, tokens: prompt, sampling },
      { seq: 2, adapter: null, tokens: [1, V + 5], sampling },
      { seq: 3, adapter: 'broken', tokens: prompt, sampling },
      { seq: 4, adapter: 'never-sent', tokens: prompt, sampling },
      { seq: 5, adapter: 'good', tokens: prompt, sampling },
    ],
    score: [
      { id: 6, adapter: null, context: prompt, targets: [11] },
      { id: 7, adapter: null, context: prompt, targets: [-1] },
    ],
  });
  t.same(r1.tokens.map((c) => c.seq).sort(), [1, 5], 'the good rows produced tokens');
  t.same(r1.scores.map((s) => s.id), [6]);
  const rejected = Object.fromEntries((r1.rejected ?? []).map((r) => [r.row, r.code]));
  t.same(rejected, { 2: 'invalid_row', 3: 'invalid_adapter', 4: 'invalid_adapter', 7: 'invalid_row' });
  // The good rows joined the batch: they decode on, alone.
  const next = (seq: number) => r1.tokens.find((c) => c.seq === seq)!.token;
  const r2 = await e.step({ ...empty, decode: [{ seq: 1, token: next(1), step: 1 }, { seq: 5, token: next(5), step: 1 }] });
  t.same(r2.tokens.map((c) => c.seq).sort(), [1, 5]);
  t.equal(r2.rejected, undefined);
});

t.test('the worker reports the adapters it holds; a forget and a reset free them, and a full collection follows', async (t) => {
  const e = new Executor({ graphPath: model.graphPath, baseGraphPath: model.baseGraphPath, base: model.tensors, provider: 'cpu', threads: 1, spin: false, reclaimBytes: 1 });
  t.teardown(() => e.close());
  await e.ready();
  const bytes = 2 * D * 4;
  const soft = (key: string): AdapterTensors => ({ key, kind: 'prompt', virtualTokens: 2, embeddings: new Float32Array(new SharedArrayBuffer(bytes)).fill(0.01) });
  const prompt = model.tokenizer.encodeSync('In the beginning');
  t.same((await e.step({ ...empty, adapters: [soft('x'), soft('y'), soft('z')] })).adapters, { held: 3, bytes: 3 * bytes, collections: 0 });
  t.same((await e.step({ ...empty, forget: ['x'] })).adapters, { held: 2, bytes: 2 * bytes, collections: 0 }, 'the collection runs after the reply');
  t.same((await e.step(empty)).adapters, { held: 2, bytes: 2 * bytes, collections: 1 });
  const reset = await e.step({ ...empty, reset: true, prefill: [{ seq: 1, adapter: 'y', tokens: prompt, sampling }] });
  t.same(reset.adapters, { held: 0, bytes: 0, collections: 1 }, 'a reset drops every adapter: the scheduler sends again what it needs');
  t.same(reset.rejected?.map((r) => r.code), ['invalid_adapter'], 'a row naming one not sent again is refused');
  t.equal((await e.step(empty)).adapters?.collections, 2);
});

t.test("a dropped row's penalty counts go with it: the same seq started again counts from nothing", async (t) => {
  const e = executor();
  await e.ready();
  const prompt = model.tokenizer.encodeSync('In the beginning');
  const penalised = { ...sampling, penalties: { presence: 0, frequency: -3 } }; // favours repeats: the counts steer every token
  const run = async () => {
    const tokens = (await e.step({ ...empty, prefill: [{ seq: 1, adapter: null, tokens: prompt, sampling: penalised }] })).tokens.map((c) => c.token);
    for (let i = 0; i < 6; i++) tokens.push((await e.step({ ...empty, decode: [{ seq: 1 }] })).tokens[0].token);
    await e.step({ ...empty, drop: [1] });
    return tokens;
  };
  const first = await run();
  t.same(await run(), first);
});

t.test('steps posted ahead: the worker feeds each row its own last token and step, and skips rows it refused', async (t) => {
  const prompt = model.tokenizer.encodeSync('In the beginning');
  const seeded = { temperature: 1, topP: 1, topK: 0, seed: 42, logprobs: 0 };
  const first: StepPlan = {
    ...empty,
    prefill: [
      { seq: 1, adapter: null, tokens: prompt, sampling },
      { seq: 2, adapter: null, tokens: [1, V + 5], sampling },
      { seq: 3, adapter: null, tokens: prompt, sampling: seeded },
    ],
  };
  const ahead = executor();
  await ahead.ready();
  // All three posted at once, as the lane does: step 2 names the refused row 2, not yet known to be refused.
  const [r1, r2, r3] = await Promise.all([
    ahead.step(first),
    ahead.step({ ...empty, decode: [{ seq: 1 }, { seq: 2 }, { seq: 3 }] }),
    ahead.step({ ...empty, decode: [{ seq: 1 }, { seq: 3 }] }),
  ]);
  t.same(r1.rejected?.map((r) => r.row), [2]);
  // One step at a time with every token and step named: the same tokens.
  const named = executor();
  await named.ready();
  const s1 = await named.step({ ...first, prefill: first.prefill.filter((p) => p.seq !== 2) });
  const tok = (r: typeof s1, seq: number) => r.tokens.find((c) => c.seq === seq)!.token;
  const s2 = await named.step({ ...empty, decode: [1, 3].map((seq) => ({ seq, token: tok(s1, seq), step: 1 })) });
  const s3 = await named.step({ ...empty, decode: [1, 3].map((seq) => ({ seq, token: tok(s2, seq), step: 2 })) });
  for (const [a, b] of [[r1, s1], [r2, s2], [r3, s3]]) t.same(a.tokens.map((c) => [c.seq, c.token]).sort(), b.tokens.map((c) => [c.seq, c.token]).sort());
  t.equal(r2.tokens.length, 2, 'the refused row was left out of the step planned ahead');
});

t.test('a hung step: past its deadline the worker is terminated and restarted; the next step runs', async (t) => {
  const e = executor();
  await e.ready();
  e.simulateHang();
  const err = await e.step({ ...empty, prefill: [{ seq: 1, adapter: null, tokens: [464], sampling }] }, 300).catch((x: Error) => x);
  t.type(err, WorkerCrashedError);
  t.match((err as Error).message, /STEP_TIMEOUT_MS/);
  t.equal(e.respawns, 1);
  const ok = await e.step({ ...empty, reset: true, prefill: [{ seq: 2, adapter: null, tokens: [464], sampling }] }, 5000);
  t.equal(ok.tokens.length, 1);
});

t.test('a step past its deadline inside session.run: the process survives, a fresh worker serves, the old one ends when its run returns', async (t) => {
  // Terminating a worker while onnxruntime-node runs natively aborted the whole process
  // (Napi::Error in terminate); this file's process is the one that would die.
  const e = executor();
  await e.ready();
  const tokens = Array.from({ length: 400 }, (_, i) => 100 + ((i * 37) % 3000));
  const heavy = { ...empty, prefill: Array.from({ length: 24 }, (_, seq) => ({ seq, adapter: null, tokens, sampling })) };
  const err = await e.step(heavy, 5).catch((x: Error) => x);
  t.type(err, WorkerCrashedError);
  t.match((err as Error).message, /STEP_TIMEOUT_MS/);
  t.equal(e.respawns, 1);
  t.equal(e.hungWorkers, 1, 'the old worker waits for its run');
  await e.ready();
  const ok = await e.step({ ...empty, reset: true, prefill: [{ seq: 100, adapter: null, tokens: [464], sampling }] }, 60_000);
  t.equal(ok.tokens.length, 1, 'the fresh worker serves');
  for (let i = 0; i < 600 && e.hungWorkers > 0; i++) await sleep(50);
  t.equal(e.hungWorkers, 0, 'the old worker was terminated once its run came back');
});

t.test('a worker that cannot create its session is retried with backoff; canRun is false meanwhile', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sps-graph-'));
  // The graph keeps its name: it refers to its weights (ONNX external data) as '<name>.data' beside it.
  const graph = join(dir, basename(model.graphPath));
  copyFileSync(model.graphPath, graph);
  if (existsSync(`${model.graphPath}.data`)) copyFileSync(`${model.graphPath}.data`, `${graph}.data`);
  const e = executor(graph, null);
  await e.ready();
  const delays: number[] = [];
  e.on('backoff', (ms: number) => delays.push(ms));
  renameSync(graph, `${graph}.away`);
  e.simulateCrash();
  for (let i = 0; i < 1000 && delays.length < 3; i++) await sleep(10);
  t.equal(e.canRun, false, 'backing off');
  t.same(delays.slice(0, 3), [100, 200, 400], 'each failed start doubles the delay');
  const err = await e.step({ ...empty, prefill: [{ seq: 1, adapter: null, tokens: [464], sampling }] }).catch((x: Error) => x);
  t.type(err, WorkerCrashedError, 'a step fails at once rather than wait');
  renameSync(`${graph}.away`, graph);
  for (let i = 0; i < 500 && !e.canRun; i++) await sleep(10);
  t.equal(e.canRun, true, 'recovered once the session can be created');
  const ok = await e.step({ ...empty, reset: true, prefill: [{ seq: 2, adapter: null, tokens: [464], sampling }] });
  t.equal(ok.tokens.length, 1);
});
