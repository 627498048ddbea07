import ort from 'onnxruntime-node';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { adapterParser } from '../../src/adapters/format.js';
import { readAdapterFolder } from '../../src/adapters/fs-store.js';
import { FeedContext } from '../../src/executor/model-constants.js';
import { StepRunner } from '../../src/executor/step-runner.js';
import { loadBaseModel } from '../../src/model/base-model.js';
import type { AdapterTensors, Sampling, StepPlan, StepResult } from '../../src/protocol.js';
import { logSoftmax, reference, refLogits, ROOT, type RefCase } from '../helpers.js';

// The WebGPU provider crashes on any zero-size input, so a runner made for it (padEmpty) pads every
// empty index input with a dummy row. Here, on the CPU, the padded runner runs on a session that
// refuses zero-size feeds, beside the plain runner (empty feeds, as the CPU keeps them) on the same
// graph: every step's results must be identical, and equal the reference.

const model = loadBaseModel(join(ROOT, 'models', 'demo-gpt2'), join(ROOT, '.cache'));
const session = await ort.InferenceSession.create(model.graphPath);
const ctx = new FeedContext(model.tensors);
const parse = adapterParser(model);
const adapters = new Map<string, AdapterTensors>();
const adapter = (name: string | null) => {
  if (name === null) return null;
  if (!adapters.has(name)) adapters.set(name, parse(name, readAdapterFolder(join(ROOT, 'adapters', name))).tensors);
  return adapters.get(name)!;
};

/** The session, refusing any feed with a zero dimension (as the WebGPU provider would crash on it). */
function strict(s: ort.InferenceSession): { session: ort.InferenceSession; runs: number } {
  const w = {
    runs: 0,
    session: {
      inputNames: s.inputNames,
      outputNames: s.outputNames,
      run: async (feeds: Record<string, ort.Tensor>, fetches: string[]) => {
        const zero = Object.entries(feeds).filter(([, x]) => x.dims.includes(0)).map(([k]) => k);
        if (zero.length > 0) throw new Error(`zero-size input: ${zero.join(', ')}`);
        w.runs++;
        return s.run(feeds, fetches);
      },
    } as unknown as ort.InferenceSession,
  };
  return w;
}

const empty = (): StepPlan => ({ drop: [], decode: [], prefill: [], score: [], adapters: [], forget: [] });
const greedy = (logprobs = 0): Sampling => ({ temperature: 0, topP: 1, topK: 0, seed: 1, logprobs });
const caseOf = (a: string | null, text: string) => reference.cases.find((c) => c.adapter === a && c.text === text)!;
const BASE = caseOf(null, 'In the beginning');
const SOFT = caseOf('pos-prompt', 'In the beginning');
const SOFT2 = caseOf('pos-prompt', 'And the LORD said unto Moses');

interface Row {
  c: RefCase;
  sampling: Sampling;
}

/** `steps` tokens for each row (prefill, then decode), as the scheduler plans them; every StepResult. */
async function generate(runner: StepRunner, rows: Row[], steps: number, seq0: number, sent: Set<string>): Promise<StepResult[]> {
  const used = [...new Set(rows.map((r) => r.c.adapter).filter((a): a is string => a !== null && !sent.has(a)))];
  used.forEach((a) => sent.add(a));
  const seqs = rows.map((_, i) => seq0 + i);
  const results = [await runner.step({ ...empty(), adapters: used.map((a) => adapter(a)!), prefill: rows.map((r, i) => ({ seq: seqs[i], adapter: adapter(r.c.adapter)?.key ?? null, tokens: r.c.ids, sampling: r.sampling })) })];
  for (let step = 1; step < steps; step++) {
    const last = results.at(-1)!.tokens;
    results.push(await runner.step({ ...empty(), decode: seqs.map((seq) => ({ seq, token: last.find((x) => x.seq === seq)!.token, step })) }));
  }
  results.push(await runner.step({ ...empty(), drop: seqs }));
  return results;
}

/** What a step decides (no timings). */
const decided = (rs: StepResult[]) => rs.map((r) => ({ tokens: r.tokens, scores: r.scores, promptKv: r.promptKv }));

const plain = new StepRunner(session, ctx);
const wrapped = strict(session);
const padded = new StepRunner(wrapped.session, ctx, { padEmpty: true });
const sent = { plain: new Set<string>(), padded: new Set<string>() };
let seq = 1;

/** The same rows through both runners; the padded one's results must be the plain one's, exactly. */
async function both(t: Test, rows: Row[], steps: number): Promise<StepResult[]> {
  const runsBefore = wrapped.runs;
  const a = await generate(plain, rows, steps, seq, sent.plain);
  const b = await generate(padded, rows, steps, seq, sent.padded);
  seq += rows.length;
  t.ok(wrapped.runs > runsBefore, 'the padded runner ran on the strict session');
  t.same(decided(b), decided(a), 'padded results identical to the unpadded runner');
  return b;
}

/** Tokens of row i, in order, from a generation's results. */
const tokensOf = (rs: StepResult[], i: number, seq0: number) => rs.flatMap((r) => r.tokens.filter((x) => x.seq === seq0 + i));

/** The reference's greedy continuation (it stops at end-of-text; a generation here runs on) against the first tokens. */
function sameGreedy(t: Test, got: number[], c: RefCase, what: string) {
  const n = Math.min(got.length, c.greedy.length);
  t.same(got.slice(0, n), c.greedy.slice(0, n), `${what}: greedy equals the reference (${n} tokens)`);
}

t.test('the unpadded runner feeds zero-size inputs: the strict session refuses them', async (t) => {
  const w = strict(session);
  const r = new StepRunner(w.session, ctx);
  await t.rejects(r.step({ ...empty(), prefill: [{ seq: 1, adapter: null, tokens: BASE.ids, sampling: greedy() }] }), /zero-size input: .*lp_rows/);
});

t.test('greedy-only decode (no lp, sample or full rows)', async (t) => {
  const rows = [{ c: BASE, sampling: greedy() }, { c: caseOf(null, 'love'), sampling: greedy() }];
  const s0 = seq;
  const rs = await both(t, rows, 8);
  rows.forEach((r, i) => sameGreedy(t, tokensOf(rs, i, s0).map((x) => x.token), r.c, r.c.text));
});

t.test('logprobs: greedy with top-5 (lp rows only)', async (t) => {
  const rows = [{ c: BASE, sampling: greedy(5) }];
  const s0 = seq;
  const rs = await both(t, rows, 4);
  const got = tokensOf(rs, 0, s0);
  sameGreedy(t, got.map((x) => x.token), BASE, BASE.text);
  const lp = logSoftmax(refLogits(BASE));
  t.ok(got[0].top!.length === 5 && got[0].top!.every((x) => Math.abs(x.logprob - lp[x.token]) <= 1e-4 * Math.max(1, Math.abs(lp[x.token]))), 'first-token top-5 log-probabilities equal the reference');
});

t.test('sampling: temperature alone (sample rows only), top-k (lp rows only), top-p (all three), and mixed with greedy', async (t) => {
  const temp: Sampling = { temperature: 0.9, topP: 1, topK: 0, seed: 7, logprobs: 0 };
  const topK: Sampling = { temperature: 1, topP: 1, topK: 40, seed: 11, logprobs: 0 };
  const topP: Sampling = { temperature: 1, topP: 0.9, topK: 0, seed: 13, logprobs: 0 };
  for (const sampling of [temp, topK, topP]) await both(t, [{ c: BASE, sampling }], 6);
  await both(t, [{ c: BASE, sampling: temp }, { c: caseOf(null, 'love'), sampling: greedy() }, { c: caseOf(null, 'ocean:'), sampling: topK }], 6);
});

t.test('score rows alone (lp rows only): label log-probabilities equal the reference', async (t) => {
  const c = caseOf(null, 'happily ->');
  const enc = (s: string) => model.tokenizer.encodeSync(s);
  const score = reference.labels.map((w, k) => ({ id: 1000 + k, adapter: null, context: enc(c.text), targets: enc(` ${w}`) }));
  const a = await plain.step({ ...empty(), score });
  const b = await padded.step({ ...empty(), score });
  t.same(b.scores, a.scores, 'padded scores identical to the unpadded runner');
  reference.labels.forEach((w, k) => {
    const sum = b.scores[k].logprobs.reduce((x, y) => x + y, 0);
    t.ok(Math.abs(sum - c.label_logprobs![w]) <= 1e-3, `${w}: ${sum} vs ${c.label_logprobs![w]}`);
  });
});

t.test('a prompt adapter: its soft prompt computed in a run that wants no logits (miss), then held (hit)', async (t) => {
  for (const [c, what] of [[SOFT, 'miss'], [SOFT2, 'hit']] as const) {
    const rows = [{ c, sampling: greedy(5) }];
    const s0 = seq;
    const rs = await both(t, rows, 6);
    t.same(rs[0].promptKv, what === 'miss' ? { hits: 0, misses: 1 } : { hits: 1, misses: 0 }, `counted a ${what}`);
    sameGreedy(t, tokensOf(rs, 0, s0).map((x) => x.token), c, what);
  }
  t.equal(padded.pastKv.size, 1, 'one soft prompt held');
});
