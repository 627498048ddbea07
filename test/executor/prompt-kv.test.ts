import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { adapterParser } from '../../src/adapters/format.js';
import { readAdapterFolder } from '../../src/adapters/fs-store.js';
import { FeedContext } from '../../src/executor/model-constants.js';
import { lengthRuns, type PrefillItem } from '../../src/executor/prefill.js';
import { PastKvCache, pastKvBytes } from '../../src/executor/prompt-kv.js';
import { openSessions, type ModelSessions } from '../../src/executor/sessions.js';
import { StepRunner } from '../../src/executor/step-runner.js';
import { loadBaseModel, type BaseModel } from '../../src/model/base-model.js';
import type { AdapterTensors, EnsembleGroup, Sampling, StepPlan, StepResult } from '../../src/protocol.js';
import { adapterFiles, adaptersCopy, logSoftmax, multipart, prefillLogits, reference, refLogits, relErr, ROOT, runPicked, startServer, SUPPORTED, type RefCase } from '../helpers.js';
import { LLAMA_FIXTURES, servedCases } from '../llama/reference.js';

// A soft prompt's keys/values are computed once per adapter version and every request starts after
// them. Every check runs the first request of an adapter (a miss: the KV is computed in that step)
// and a later one (a hit) against the reference, alone and in mixed batches.

const GREEDY: Sampling = { temperature: 0, topP: 1, topK: 0, seed: 1, logprobs: 5 };

interface Model {
  name: string;
  model: BaseModel;
  sessions: ModelSessions;
  ctx: FeedContext;
  cases: RefCase[];
  adapter: (name: string | null) => AdapterTensors | null;
}

async function open(name: string, dir: string, adapterDir: string, cases: RefCase[]): Promise<Model> {
  const model = loadBaseModel(dir, name === 'demo-gpt2' ? join(ROOT, '.cache') : mkdtempSync(join(tmpdir(), 'pkv-graph-')));
  const parse = adapterParser(model);
  const tensors = new Map<string, AdapterTensors>();
  const adapter = (a: string | null) => {
    if (a === null) return null;
    if (!tensors.has(a)) tensors.set(a, parse(a, readAdapterFolder(join(adapterDir, a))).tensors);
    return tensors.get(a)!;
  };
  return { name, model, sessions: await openSessions(model), ctx: new FeedContext(model.tensors), cases, adapter };
}

/** Drives a StepRunner like the scheduler: prefill, then one decode step per token, until 20 tokens or end-of-text. */
class Driver {
  private seq = 1;
  private readonly sent = new Set<string>();
  readonly counts = { hits: 0, misses: 0 };
  readonly runner: StepRunner;

  /** `prefillRunCost`, `packPositions`: StepRunner's; Infinity prefills a step's new rows in one padded run, 0 packs none. */
  constructor(m: Model, promptKv: boolean, prefillRunCost?: number, packPositions?: number) {
    this.runner = new StepRunner(m.sessions.session, m.ctx, { promptKv, base: m.sessions.base, prefillRunCost, packPositions });
  }

  /** Forward passes so far, on either graph. */
  get runs(): number {
    return this.runner.runs.base + this.runner.runs.full;
  }

  async step(plan: Partial<StepPlan>, adapters: (AdapterTensors | null)[] = []): Promise<StepResult> {
    const fresh = [...new Set(adapters.filter((a): a is AdapterTensors => a !== null && !this.sent.has(a.key)))];
    fresh.forEach((a) => this.sent.add(a.key));
    const res = await this.runner.step({ drop: [], decode: [], prefill: [], score: [], adapters: fresh, forget: [], ...plan });
    this.counts.hits += res.promptKv?.hits ?? 0;
    this.counts.misses += res.promptKv?.misses ?? 0;
    return res;
  }

  forget(key: string): Promise<StepResult> {
    this.sent.delete(key);
    return this.step({ forget: [key] });
  }

  /** Rows with the same `group` index form one ensemble (its first row leads). Returns tokens and first-token top-5 per row. */
  async generate(rows: { adapter: AdapterTensors | null; ids: number[]; group?: number; weight?: number }[]) {
    const seqs = rows.map(() => this.seq++);
    const leaderOf = rows.map((r, i) => (r.group === undefined ? i : rows.findIndex((x) => x.group === r.group)));
    const groups: (EnsembleGroup | undefined)[] = rows.map((r, i) => (r.group === undefined ? undefined : { leader: seqs[leaderOf[i]], weight: r.weight ?? 1 }));
    const tokens = rows.map(() => [] as number[]);
    const top = rows.map(() => [] as { token: number; logprob: number }[]);
    const prefill = rows.map((r, i) => ({ seq: seqs[i], adapter: r.adapter?.key ?? null, tokens: r.ids, sampling: GREEDY, group: groups[i] }));
    let res = await this.step({ prefill }, rows.map((r) => r.adapter));
    const live = new Set(rows.keys());
    for (;;) {
      for (const c of res.tokens) {
        const i = seqs.indexOf(c.seq);
        if (tokens[i].length === 0) top[i] = c.top ?? [];
        tokens[i].push(c.token);
      }
      // Members follow their leader's token.
      rows.forEach((_, i) => leaderOf[i] !== i && (tokens[i] = tokens[leaderOf[i]]));
      const drop = [...live].filter((i) => tokens[i].length >= 20 || tokens[i].at(-1) === 0);
      drop.forEach((i) => live.delete(i));
      const decode = [...live].map((i) => ({ seq: seqs[i], token: tokens[i].at(-1)!, step: tokens[i].length }));
      if (decode.length === 0) {
        await this.step({ drop: drop.map((i) => seqs[i]) });
        return { tokens, top };
      }
      res = await this.step({ drop: drop.map((i) => seqs[i]), decode });
    }
  }

  async score(rows: { adapter: AdapterTensors | null; context: number[]; targets: number[] }[]): Promise<number[][]> {
    const first = this.seq;
    const score = rows.map((r) => ({ id: this.seq++, adapter: r.adapter?.key ?? null, context: r.context, targets: r.targets }));
    const res = await this.step({ score }, rows.map((r) => r.adapter));
    return rows.map((_, i) => res.scores.find((s) => s.id === first + i)!.logprobs);
  }
}

const close = (a: number, b: number, tol = 1e-4) => Math.abs(a - b) <= tol * Math.max(1, Math.abs(b));
const label = (c: RefCase) => `${c.adapter ?? 'base'} ${JSON.stringify(c.text)}`;
const isSoft = (m: Model, c: RefCase) => m.adapter(c.adapter)?.kind === 'prompt';

/** The reference's greedy tokens and top-5 logprobs against a generation. */
function checkGeneration(t: Test, m: Model, c: RefCase, got: { tokens: number[]; top: { token: number; logprob: number }[] }, what: string) {
  t.same(got.tokens, c.greedy.slice(0, got.tokens.length), `${what}: greedy ${label(c)}`);
  t.equal(got.tokens.length, Math.min(20, c.greedy.length), `${what}: length ${label(c)}`);
  const lp = logSoftmax(refLogits(c));
  t.ok(got.top.length === 5 && got.top.every((x) => close(x.logprob, lp[x.token])), `${what}: first-token top-5 logprobs ${label(c)}`);
}

async function referenceChecks(t: Test, m: Model) {
  const soft = m.cases.filter((c) => isSoft(m, c));
  t.ok(soft.length >= 5, `${m.name}: ${soft.length} soft-prompt cases`);

  t.test('an empty prompt: the soft prompt predicts the first token; each token is the argmax of a prefill of the soft prompt and the tokens before it, cache on and off, alone and mixed', async (t) => {
    const adapters = [...new Set(soft.map((c) => c.adapter))].map((a) => m.adapter(a)!);
    // The oracle: one uncached prefill per position (prefillFeeds straight into the graph), its last logits.
    const expected = async (a: AdapterTensors, tokens: number[]) => {
      const out: { token: number; logProbs: ArrayLike<number> }[] = [];
      for (let k = 0; k < tokens.length; k++) {
        const { rows } = await prefillLogits(m.sessions, m.ctx, [{ adapter: a, tokens: tokens.slice(0, k), logitAt: [a.virtualTokens + k - 1], past: undefined }]);
        out.push({ token: rows[0].indexOf(Math.max(...rows[0])), logProbs: logSoftmax(rows[0]) });
      }
      return out;
    };
    for (const promptKv of [true, false]) {
      const d = new Driver(m, promptKv);
      const other = m.cases.find((c) => !isSoft(m, c))!;
      // Beside them: a row of another kind, and a row of the first soft prompt with a prompt (it starts after the cached KV).
      const sameAdapter = soft.find((c) => m.adapter(c.adapter) === adapters[0])!;
      const mixed = await d.generate([...adapters.map((a) => ({ adapter: a, ids: [] })), { adapter: m.adapter(other.adapter), ids: other.ids }, { adapter: adapters[0], ids: sameAdapter.ids }]);
      for (const [i, a] of adapters.entries()) {
        const alone = await d.generate([{ adapter: a, ids: [] }]);
        const want = await expected(a, alone.tokens[0]);
        t.ok(alone.tokens[0].length > 0, `${a.key}: tokens`);
        t.same(alone.tokens[0], want.map((w) => w.token), `${a.key} (cache ${promptKv ? 'on' : 'off'}): each token the oracle's argmax`);
        t.ok(alone.top[0].length === 5 && alone.top[0].every((x) => close(x.logprob, want[0].logProbs[x.token])), `${a.key}: first-token top-5 logprobs`);
        t.same(mixed.tokens[i], alone.tokens[0], `${a.key}: mixed with the other soft prompts and a ${other.adapter ?? 'base'} row, as alone`);
      }
      t.same(mixed.tokens[adapters.length], other.greedy.slice(0, mixed.tokens[adapters.length].length), 'the row of another kind keeps its reference tokens');
      t.same(mixed.tokens[adapters.length + 1], sameAdapter.greedy.slice(0, mixed.tokens[adapters.length + 1].length), `a ${sameAdapter.adapter} row with a prompt, in the same step, keeps its reference tokens`);
      t.ok(mixed.tokens[adapters.length + 1].length > 0);
    }
  });

  t.test('computed past through prefillFeeds: last logits within 1e-4, alone and in one mixed batch', async (t) => {
    const cache = new PastKvCache(m.ctx, true);
    // Every soft prompt in one padded run (the prompts' lengths differ), every other kind's row beside.
    await cache.prepare(m.cases.map((c) => m.adapter(c.adapter)), async (f) => (await runPicked(m.sessions, m.ctx, f, [])).out);
    const softAdapters = new Set(soft.map((c) => c.adapter));
    t.equal(cache.size, softAdapters.size, 'one KV per soft prompt');
    t.same({ hits: cache.hits, misses: cache.misses }, { hits: 0, misses: soft.length }, 'every row of the step a miss');
    const items = async (cases: RefCase[]) =>
      cases.map((c): PrefillItem => {
        const adapter = m.adapter(c.adapter);
        return { adapter, tokens: c.ids, logitAt: [c.ids.length - 1], past: cache.get(adapter) };
      });
    const logits = async (batch: PrefillItem[]) => {
      return (await prefillLogits(m.sessions, m.ctx, batch)).rows;
    };
    for (const c of soft) {
      const [it] = await items([c]);
      t.ok(it.past && it.past.n === m.adapter(c.adapter)!.virtualTokens, `${label(c)}: starts after its soft prompt`);
      const err = relErr((await logits([it]))[0], refLogits(c));
      t.ok(err < 1e-4, `alone: ${label(c)}: ${err.toExponential(2)}`);
    }
    // Every case (base, soft prompts, prefixes, BitFit, LoRA, IA3) in one padded batch.
    const all = await logits(await items(m.cases));
    all.forEach((l, i) => {
      const err = relErr(l, refLogits(m.cases[i]));
      t.ok(err < 1e-4, `mixed: ${label(m.cases[i])}: ${err.toExponential(2)}`);
    });
  });

  t.test('generate: the first request of an adapter (miss) and later ones (hits) equal the reference', async (t) => {
    const d = new Driver(m, true);
    const seen = new Set<string | null>();
    for (const c of soft) {
      const before = { ...d.counts };
      const got = await d.generate([{ adapter: m.adapter(c.adapter), ids: c.ids }]);
      checkGeneration(t, m, c, { tokens: got.tokens[0], top: got.top[0] }, seen.has(c.adapter) ? 'hit' : 'miss');
      t.same(d.counts, seen.has(c.adapter) ? { hits: before.hits + 1, misses: before.misses } : { hits: before.hits, misses: before.misses + 1 }, `${label(c)}: counted`);
      seen.add(c.adapter);
    }
    t.equal(d.runner.pastKv.size, seen.size, 'one KV per soft prompt');
  });

  t.test('generate: every case in one mixed batch, cold (misses and hits in one step) then warm', async (t) => {
    const d = new Driver(m, true);
    const rows = m.cases.map((c) => ({ adapter: m.adapter(c.adapter), ids: c.ids }));
    const softAdapters = new Set(soft.map((c) => c.adapter));
    for (const what of ['cold', 'warm']) {
      const before = { ...d.counts };
      const got = await d.generate(rows);
      m.cases.forEach((c, i) => checkGeneration(t, m, c, { tokens: got.tokens[i], top: got.top[i] }, what));
      // Cold: every soft-prompt row of the step prefills its soft prompt; warm: every one starts after the kept KV.
      const misses = what === 'cold' ? soft.length : 0;
      t.same(d.counts, { hits: before.hits + soft.length - misses, misses: before.misses + misses }, `${what}: ${misses} misses`);
      t.equal(d.runner.pastKv.size, softAdapters.size + new Set(m.cases.filter((c) => m.adapter(c.adapter)?.kind === 'prefix').map((c) => c.adapter)).size, `${what}: one past per soft prompt and prefix`);
    }
  });

  /**
   * Two drivers, warmed with every case (so that every soft prompt's KV is held: the step measured is
   * the rows' runs alone), then one step of every case as a new row beside score rows (each case's
   * last two tokens after the rest), and one decode step: each driver's runs, padding and results.
   */
  const stepBoth = async (drivers: Driver[]) => {
    const rows = m.cases.map((c) => ({ adapter: m.adapter(c.adapter), ids: c.ids }));
    for (const d of drivers) await d.generate(rows);
    const key = (c: RefCase) => m.adapter(c.adapter)?.key ?? null;
    const prefill = m.cases.map((c, i) => ({ seq: 1000 + i, adapter: key(c), tokens: c.ids, sampling: GREEDY }));
    const score = m.cases.filter((c) => c.ids.length > 2).map((c, i) => ({ id: 2000 + i, adapter: key(c), context: c.ids.slice(0, -2), targets: c.ids.slice(-2) }));
    const bySeq = (r: StepResult) => [...r.tokens].sort((a, b) => a.seq - b.seq);
    const results = [];
    for (const d of drivers) {
      const before = d.runs;
      const res = await d.step({ prefill, score }, rows.map((r) => r.adapter));
      const next = await d.step({ decode: res.tokens.map((c) => ({ seq: c.seq, token: c.token, step: 1 })) });
      results.push({ runs: d.runs - before, padded: res.paddedTokens, first: bySeq(res), scores: [...res.scores].sort((a, b) => a.id - b.id), second: bySeq(next) });
    }
    return { results, score };
  };

  t.test("a step's new rows in runs of similar length: the runs lengthRuns gives, and the same tokens and log-probabilities as one padded run", async (t) => {
    const { results: [a, b], score } = await stepBoth([new Driver(m, true, undefined, 0), new Driver(m, true, Infinity)]);
    const width = (c: RefCase) => c.ids.length;
    const want = lengthRuns([...m.cases.map((c) => ({ rows: 1, width: width(c) })), ...score.map((s) => ({ rows: 1, width: s.context.length + 1 }))]).length;
    t.ok(want > 1, `the cases' lengths (${Math.min(...m.cases.map(width))} to ${Math.max(...m.cases.map(width))}) make ${want} runs`);
    t.same([a.runs, b.runs], [want + 1, 2], 'split: its runs and one decode step; unsplit: one run and the decode step');
    // Only each row's own padding differs, which the mask hides: the very same numbers.
    t.same(a.first, b.first, 'first tokens and top-5 log-probabilities');
    t.equal(a.scores.length, score.length, 'every score row answered');
    t.same(a.scores, b.scores, 'score rows: the targets\' log-probabilities');
    t.same(a.second, b.second, 'the next token, decoded from the KV the runs placed');
  });

  t.test("a step's rows of the base graph packed: the same tokens, log-probabilities within 1e-5, as one padded run", async (t) => {
    const { results: [a, b] } = await stepBoth([new Driver(m, true), new Driver(m, true, Infinity)]);
    t.ok(a.padded! <= b.padded!, `padding: ${a.padded} positions against ${b.padded} (prefill.ts packOrSplit packs where its model says so)`);
    t.same(a.first.map((c) => c.token), b.first.map((c) => c.token), 'first tokens');
    t.same(a.second.map((c) => c.token), b.second.map((c) => c.token), 'the next token, decoded from the KV the packed run placed');
    const logprobs = (x: typeof a) => [...x.first.flatMap((c) => [c.logprob ?? 0, ...(c.top ?? []).map((p) => p.logprob)]), ...x.scores.flatMap((s) => s.logprobs), ...x.second.flatMap((c) => (c.top ?? []).map((p) => p.logprob))];
    const [la, lb] = [logprobs(a), logprobs(b)];
    t.equal(la.length, lb.length);
    t.ok(la.every((x, i) => close(x, lb[i], 1e-5)), `log-probabilities within 1e-5 (largest difference ${Math.max(...la.map((x, i) => Math.abs(x - lb[i]))).toExponential(1)})`);
    t.same(a.scores.map((s) => s.id), b.scores.map((s) => s.id), 'every score row answered');
  });

  t.test('an ensemble stays in one run whatever its members\' lengths', async (t) => {
    const [shortest, longest] = [...m.cases].sort((a, b) => a.ids.length - b.ids.length).filter((_, i, all) => i === 0 || i === all.length - 1);
    const member = (c: RefCase, group?: number) => ({ adapter: m.adapter(c.adapter), ids: c.ids, group, weight: 0.5 });
    // Two ensembles of a short and a long member, between single rows of both lengths. At no cost
    // per run every length would run apart: the members must not.
    const rows = [member(shortest), member(shortest, 0), member(longest, 0), member(longest, 1), member(shortest, 1), member(longest)];
    const [split, one] = [new Driver(m, true, 0, 0), new Driver(m, true, Infinity)];
    const [a, b] = [await split.generate(rows), await one.generate(rows)];
    t.ok(shortest.ids.length < longest.ids.length, `members of ${shortest.ids.length} and ${longest.ids.length} tokens`);
    t.equal(split.runs, one.runs + 1, 'the prefill step made two runs: the short single row, and the rest');
    t.same(a.tokens, b.tokens, 'tokens as in one run');
    t.same(a.top, b.top, 'first-token top-5 log-probabilities as in one run');
  });
}

t.test('GPT-2 demo', async (t) => {
  const cases = reference.cases.filter((c) => SUPPORTED.has(c.adapter));
  const m = await open('demo-gpt2', join(ROOT, 'models', 'demo-gpt2'), join(ROOT, 'adapters'), cases);
  await referenceChecks(t, m);

  t.test('score rows: label log-probabilities equal the reference, miss and hit; a row with no context too', async (t) => {
    const on = new Driver(m, true);
    const off = new Driver(m, false);
    const enc = (s: string) => m.model.tokenizer.encodeSync(s);
    for (const c of cases.filter((c) => c.label_logprobs && isSoft(m, c))) {
      const prompt = c.text.endsWith('->') ? c.text : `${c.text} ->`;
      const rows = reference.labels.map((w) => ({ adapter: m.adapter(c.adapter), context: enc(prompt), targets: enc(` ${w}`) }));
      const [cached, plain, again] = [await on.score(rows), await off.score(rows), await on.score(rows)];
      // Every row starts after the same computed KV, so a miss and a hit give the very same numbers.
      t.same(again, cached, `${label(c)}: a hit equals the miss exactly`);
      reference.labels.forEach((w, i) => {
        const sum = cached[i].reduce((a, b) => a + b, 0);
        t.ok(Math.abs(sum - c.label_logprobs![w]) <= 1e-3, `${label(c)} ${w}: ${sum} vs ${c.label_logprobs![w]}`);
        t.ok(cached[i].length === plain[i].length && cached[i].every((x, k) => close(x, plain[i][k])), `${label(c)} ${w}: equals the uncached path`);
      });
    }
    // The first case of each adapter: its label rows all prefill the soft prompt (one step); later cases hit.
    t.ok(on.counts.misses === 2 * reference.labels.length && on.counts.hits > 0, `hits ${on.counts.hits}, misses ${on.counts.misses}`);
    t.same(off.counts, { hits: 0, misses: 0 }, 'cache off: nothing counted');
    // No context: the first target's logits come from the soft prompt's last position.
    for (const c of cases.filter((c) => isSoft(m, c))) {
      const row = [{ adapter: m.adapter(c.adapter), context: [], targets: c.ids }];
      const [cached, plain] = [(await on.score(row))[0], (await off.score(row))[0]];
      t.ok(cached.length === c.ids.length && cached.every((x, k) => close(x, plain[k])), `no context: ${label(c)}`);
    }
    // Without a soft prompt the first target has no predictor: one target alone leaves nothing to
    // compute, and the step (which fetches no output then) still answers, with no log-probabilities.
    const base = cases.find((c) => c.adapter === null)!;
    for (const d of [on, off]) t.same(await d.score([{ adapter: null, context: [], targets: [base.ids[0]] }]), [[]], 'no context, no soft prompt, one target: empty');
  });

  t.test('ensembles with soft-prompt members, and soft prompts beside every other kind: same as uncached', async (t) => {
    const on = new Driver(m, true);
    const off = new Driver(m, false);
    const text = cases.find((c) => c.adapter === 'pos-prompt' && c.text === 'And the LORD said unto Moses')!.ids;
    const rows = [
      { adapter: m.adapter('pos-prompt'), ids: text, group: 0, weight: 0.5 },
      { adapter: m.adapter('kjv-prompt'), ids: text, group: 0, weight: 0.3 },
      { adapter: m.adapter('pos-lora'), ids: text, group: 0, weight: 0.2 },
      { adapter: m.adapter('fortune-ptuning'), ids: text, group: 1, weight: 0.5 },
      { adapter: m.adapter('pos-bitfit'), ids: text, group: 1, weight: 0.5 },
      { adapter: m.adapter('define-prefix'), ids: text },
      { adapter: m.adapter('pos-ia3'), ids: text },
    ];
    for (const what of ['miss', 'hit']) {
      const [a, b] = [await on.generate(rows), await off.generate(rows)];
      t.same(a.tokens, b.tokens, `${what}: tokens`);
      t.ok(a.top.every((r, i) => r.every((x, k) => x.token === b.top[i][k].token && close(x.logprob, b.top[i][k].logprob))), `${what}: top-5 logprobs`);
    }
    t.same(on.counts, { hits: 3, misses: 3 }, 'three soft prompts: computed once each');
  });

  t.test('forget frees the KV; the same adapter sent again is a miss', async (t) => {
    const d = new Driver(m, true);
    const a = m.adapter('kjv-prompt')!;
    const c = cases.find((x) => x.adapter === 'kjv-prompt')!;
    await d.generate([{ adapter: a, ids: c.ids }]);
    t.equal(d.runner.pastKv.size, 1);
    t.equal(d.runner.pastKv.bytes, a.virtualTokens * 4 * 2 * 256 * 4, 'bytes: n · layers · 2 · hidden · 4');
    await d.forget(a.key);
    t.equal(d.runner.pastKv.size, 0, 'forgotten');
    t.equal(d.runner.pastKv.bytes, 0);
    const got = await d.generate([{ adapter: a, ids: c.ids }]);
    checkGeneration(t, m, c, { tokens: got.tokens[0], top: got.top[0] }, 'after forget');
    t.same(d.counts, { hits: 0, misses: 2 });
  });

  t.test('a byte bound drops the least recently used past first', async (t) => {
    const [A, B, C] = [m.adapter('pos-prefix')!, m.adapter('define-prefix')!, m.adapter('kjv-prompt')!];
    const bytes = (a: AdapterTensors) => pastKvBytes(m.model.config, a.virtualTokens);
    const cache = new PastKvCache(m.ctx, true, bytes(A) + bytes(B) + bytes(C) - 1);
    const a = cache.get(A);
    cache.get(B);
    t.equal(cache.get(A), a, 'a held prefix is laid out once');
    await cache.prepare([C, null], async (f) => (await runPicked(m.sessions, m.ctx, f, [])).out);
    t.equal(cache.size, 2, 'one dropped');
    t.equal(cache.bytes, bytes(A) + bytes(C));
    t.equal(cache.get(A), a, 'the recently used prefix stayed');
    t.ok(cache.get(C), 'the soft prompt is held');
    t.same({ hits: cache.hits, misses: cache.misses }, { hits: 0, misses: 1 });
  });
});

for (const name of ['tiny-llama', 'tiny-qwen2']) {
  t.test(name, async (t) => {
    const dir = join(LLAMA_FIXTURES, name);
    const m = await open(name, dir, join(dir, 'adapters'), servedCases(name));
    await referenceChecks(t, m);
  });
}

// Through the real server: the adapter key carries the content version, so replacing a task's
// adapter can never serve the old soft prompt's KV.
t.test('HTTP: a hot swap invalidates the cached prompt KV', async (t) => {
  const server = await startServer({ ADAPTERS_DIR: adaptersCopy(['pos-bitfit']), ADMIN_TOKEN: 'secret', WORKERS: '1' });
  t.teardown(() => server.close());
  const auth = { authorization: 'Bearer secret' };
  const upload = async (from: string) => {
    const body = multipart(adapterFiles(from));
    const res = await server.app.inject({ method: 'PUT', url: '/v1/adapters/swapped', payload: body.payload, headers: { ...body.headers, ...auth } });
    t.ok(res.statusCode < 300, `upload ${from}: ${res.statusCode}`);
  };
  const text = 'And the LORD said unto Moses';
  const generate = async () => (await server.app.inject({ method: 'POST', url: '/v1/tasks/swapped/generate', payload: { prompt: text, raw: true, max_tokens: 20, temperature: 0 } })).json().token_ids;
  const greedyOf = (adapter: string) => {
    const c = reference.cases.find((x) => x.adapter === adapter && x.text === text)!;
    return c.greedy.at(-1) === 0 ? c.greedy.slice(0, -1) : c.greedy;
  };
  const counter = async () => {
    const body = (await server.app.inject({ method: 'GET', url: '/metrics' })).body;
    const read = (result: string) => Number(new RegExp(`^sps_prompt_kv_cache_total\\{result="${result}"\\} (\\S+)$`, 'm').exec(body)?.[1] ?? 0);
    return { hit: read('hit'), miss: read('miss') };
  };
  t.not(greedyOf('kjv-prompt').join(), greedyOf('fortune-ptuning').join(), 'the two adapters differ on this text');
  const cached = server.registry.cacheStats.bytes;
  await upload('kjv-prompt');
  // The adapter LRU counts the soft prompt [n, 256] and the KV a worker keeps for it [n, 4 layers · 2 · 256].
  const n = (await server.registry.resolve('swapped')).adapter!.tensors.virtualTokens;
  t.equal(server.registry.cacheStats.bytes - cached, n * 256 * 4 + n * 4 * 2 * 256 * 4, 'LRU cost: tensors and KV');
  t.same(await generate(), greedyOf('kjv-prompt'), 'X: first request (miss)');
  t.same(await generate(), greedyOf('kjv-prompt'), 'X: second request (hit)');
  t.same(await counter(), { hit: 1, miss: 1 });
  await upload('fortune-ptuning');
  t.same(await generate(), greedyOf('fortune-ptuning'), "after the swap: Y's reference, not X's");
  t.same(await counter(), { hit: 1, miss: 2 }, 'the swap was a miss');
  t.same(await generate(), greedyOf('fortune-ptuning'), 'Y again (hit)');
  t.same(await counter(), { hit: 2, miss: 2 });
  // Deleted: the adapter LRU no longer counts it (the worker drops its KV when the scheduler forgets the key: see 'forget frees the KV').
  t.equal((await server.app.inject({ method: 'DELETE', url: '/v1/adapters/swapped', headers: auth })).statusCode, 204);
  t.equal(server.registry.cacheStats.bytes, cached, 'LRU bytes back to where they were');
});
