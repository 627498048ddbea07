import { join } from 'node:path';
import t from 'tap';
import { adapterParser } from '../../src/adapters/format.js';
import { readAdapterFolder } from '../../src/adapters/fs-store.js';
import { FeedContext, needsFullGraph } from '../../src/executor/model-constants.js';
import { lengthRuns, PACK_POSITIONS, packedRuns, packOrSplit, prefillFeeds, runCost, virtualTokens, type PrefillItem } from '../../src/executor/prefill.js';
import { openSessions, type ModelSessions } from '../../src/executor/sessions.js';
import { loadBaseModel } from '../../src/model/base-model.js';
import { fetchedKv } from '../../src/model/kv-output.js';
import { prefillLogits, reference, refLogits, relErr, ROOT, runPicked, SUPPORTED } from '../helpers.js';

const model = loadBaseModel(join(ROOT, 'models', 'demo-gpt2'), join(ROOT, '.cache'));
const parse = adapterParser(model);
// As a worker opens them: rows without BitFit, LoRA or IA3 run on the base graph. `full` forces the full graph.
const served = await openSessions(model);
const full: ModelSessions = { session: served.session, base: null };
const ctx = new FeedContext(model.tensors);
const cases = reference.cases.filter((c) => SUPPORTED.has(c.adapter));
const items: PrefillItem[] = cases.map((c) => {
  const adapter = c.adapter ? parse(c.adapter, readAdapterFolder(join(ROOT, 'adapters', c.adapter))).tensors : null;
  return { adapter, tokens: c.ids, logitAt: [virtualTokens(adapter, 'prompt') + c.ids.length - 1] };
});

async function lastLogits(batch: PrefillItem[], sessions = served): Promise<Float32Array[]> {
  return (await prefillLogits(sessions, ctx, batch)).rows;
}

t.test('the base graph opens beside the full one, and serves exactly the rows without per-row parameters', async (t) => {
  t.ok(served.base, 'the demo model has a base graph');
  t.notOk(served.base!.inputNames.some((n) => n.endsWith('.bias') || n.startsWith('lora')), 'it takes no bias or adapter inputs');
  const kinds = new Set(items.map((it) => it.adapter?.kind ?? 'base'));
  for (const kind of kinds) {
    const batch = items.filter((it) => (it.adapter?.kind ?? 'base') === kind).slice(0, 1);
    const { graph } = await prefillLogits(served, ctx, batch);
    t.equal(graph, needsFullGraph(batch.map((it) => it.adapter)) ? 'full' : 'base', `${kind} rows run on the ${graph} graph`);
  }
  t.same([...kinds].filter((k) => needsFullGraph([items.find((it) => (it.adapter?.kind ?? 'base') === k)!.adapter])).sort(), ['bitfit', 'ia3', 'lora']);
});

t.test('last-position logits of every case, alone, within 1e-4, on the graph served and on the full graph: the same bit for bit', async (t) => {
  for (let i = 0; i < cases.length; i++) {
    const label = `${cases[i].adapter ?? 'base'} ${JSON.stringify(cases[i].text)}`;
    const [onServed] = await lastLogits([items[i]], served);
    const [onFull] = await lastLogits([items[i]], full);
    const err = relErr(onServed, refLogits(cases[i]));
    t.ok(err < 1e-4, `${label}: ${err.toExponential(2)}`);
    // A row's numbers must not depend on which graph its batch ran on.
    t.ok(Buffer.from(onServed.buffer).equals(Buffer.from(onFull.buffer)), `${label}: base and full graph identical`);
  }
});

t.test('the cases without per-row parameters in one padded batch on the base graph: same logits', async (t) => {
  const picked = items.flatMap((it, i) => (needsFullGraph([it.adapter]) ? [] : [i]));
  const { rows, graph } = await prefillLogits(served, ctx, picked.map((i) => items[i]));
  t.equal(graph, 'base');
  rows.forEach((logits, k) => {
    const c = cases[picked[k]];
    const err = relErr(logits, refLogits(c));
    t.ok(err < 1e-4, `${c.adapter ?? 'base'} ${JSON.stringify(c.text)}: ${err.toExponential(2)}`);
  });
});

t.test('the cases without per-row parameters packed into one run, prefixes and soft prompts among them: same logits', async (t) => {
  const picked = items.flatMap((it, i) => (needsFullGraph([it.adapter]) ? [] : [i]));
  const batch = picked.map((i) => items[i]);
  const layout = prefillFeeds(ctx, batch, true);
  t.equal(layout.padded, 0, 'no padding');
  t.same(layout.feeds.inputs_embeds.dims.slice(0, 2), [1, batch.reduce((n, it) => n + it.tokens.length + virtualTokens(it.adapter, 'prompt'), 0)], 'one batch row, every position');
  t.ok(batch.some((it) => it.adapter?.kind === 'prefix') && batch.some((it) => it.adapter?.kind === 'prompt'), 'prefix pasts and fed soft prompts are among them');
  const { out, graph } = await runPicked(served, ctx, layout.feeds, batch.map((it) => it.adapter));
  t.equal(graph, 'base');
  const V = model.config.vocabSize;
  const logits = out.logits.data as Float32Array;
  const padded = await lastLogits(batch);
  picked.forEach((i, k) => {
    const row = logits.subarray(k * V, (k + 1) * V);
    const err = relErr(row, refLogits(cases[i]));
    t.ok(err < 1e-4, `${cases[i].adapter ?? 'base'} ${JSON.stringify(cases[i].text)}: ${err.toExponential(2)}`);
    t.ok(relErr(row, padded[k]) < 1e-5, 'as the padded run');
  });
});

t.test('a packed run starts each item at its own columns and returns each its own keys and values', async (t) => {
  const batch = [items.find((it) => it.adapter?.kind === 'prefix')!, items.find((it) => !it.adapter)!, items.find((it) => it.adapter?.kind === 'prefix')!];
  const packed = prefillFeeds(ctx, batch, true);
  const padded = prefillFeeds(ctx, batch);
  const n = batch[0].adapter!.virtualTokens;
  t.same(packed.row, [0, 0, 0]);
  t.same(packed.pastAt, [0, n, n]);
  t.same(packed.seqAt, [0, batch[0].tokens.length, batch[0].tokens.length + batch[1].tokens.length]);
  t.same(padded.row, [0, 1, 2]);
  t.same(padded.seqAt, [0, 0, 0]);
  const pos = (l: typeof packed, r: number) => Array.from((l.feeds.position_ids.data as BigInt64Array).subarray(l.row[r] * l.S + l.seqAt[r], l.row[r] * l.S + l.seqAt[r] + l.length[r]), Number);
  for (let r = 0; r < 3; r++) t.same(pos(packed, r), pos(padded, r), `item ${r}: the same positions (after its prefix)`);
  const kv = async (l: typeof packed) => (await runPicked(served, ctx, l.feeds, batch.map((it) => it.adapter))).out;
  const [a, b] = [await kv(packed), await kv(padded)];
  const { kvHeads: H, headDim: hd, layers: L } = model.config;
  /** Item r's columns of every layer's new keys and values, as one list. */
  const cols = (o: typeof a, l: typeof packed, r: number) =>
    fetchedKv(o, L).flatMap(({ keys, values }) =>
      [keys, values].flatMap((d) => Array.from({ length: H }, (_, h) => Array.from(d.subarray(((l.row[r] * H + h) * l.S + l.seqAt[r]) * hd, ((l.row[r] * H + h) * l.S + l.seqAt[r] + l.length[r]) * hd))).flat()),
    );
  for (let r = 0; r < 3; r++) {
    const err = relErr(cols(a, packed, r), cols(b, padded, r));
    t.ok(err < 1e-5, `item ${r}: its new keys and values as in the padded run (${err.toExponential(1)})`);
  }
});

t.test('packedRuns: narrowest first, runs filled up to the limit, a wider unit alone', async (t) => {
  t.same(packedRuns([10, 30, 20], 256), [[0, 2, 1]]);
  t.same(packedRuns([100, 100, 100, 10], 256), [[3, 0, 1], [2]]);
  t.same(packedRuns([300, 5], 256), [[1], [0]], 'a unit over the limit runs alone');
  t.same(packedRuns([]), []);
  t.equal(PACK_POSITIONS, 64, "the default, measured best (bench/prefill-runs.ts)");
});

t.test('packOrSplit: packs rows of mixed lengths, not rows whose pasts its queries would all attend over', async (t) => {
  const rows = (fed: number[], past = 0) => fed.map((f) => [{ fed: f, past }]);
  const mixed = packOrSplit(rows([4, 26, 9, 12, 5, 17, 7, 21]), PACK_POSITIONS);
  t.ok(mixed.packed, 'prompts of 4 to 26 tokens, no past: packed');
  t.same(mixed.runs.flat().sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7], 'every unit in one run');
  // 64 one-token rows with a 16-column prefix: packed, each query sees 64 × 16 past columns (measured 1.7× slower).
  const prefixed = packOrSplit(rows(Array(64).fill(1), 16), PACK_POSITIONS);
  t.notOk(prefixed.packed, 'one-token rows with pasts: runs of similar length');
  t.same(prefixed.runs, lengthRuns(Array.from({ length: 64 }, () => ({ rows: 1, width: 1 }))), 'lengthRuns\' split');
  t.notOk(packOrSplit(rows([4, 26]), 0).packed, 'pack 0: never');
  t.ok(runCost([{ fed: 10, past: 0 }, { fed: 2, past: 0 }], true) < runCost([{ fed: 10, past: 0 }, { fed: 2, past: 0 }], false), 'a packed run computes no padding');
});

t.test('all cases in one padded, mixed-adapter batch: same logits', async (t) => {
  const all = await lastLogits(items);
  all.forEach((logits, i) => {
    const err = relErr(logits, refLogits(cases[i]));
    t.ok(err < 1e-4, `${cases[i].adapter ?? 'base'} ${JSON.stringify(cases[i].text)}: ${err.toExponential(2)}`);
  });
});

// Two LoRA adapters stack along the rank axis (K = 16 here): a row that also picked up the other
// block would get its update twice. The copy has the same tensors under another key, so the
// reference still applies.
t.test('two LoRA adapters and an IA3 one in one batch: each row applies only its own', async (t) => {
  const loraCases = cases.filter((c) => c.adapter === 'pos-lora' || c.adapter === 'pos-ia3');
  const copy = parse('pos-lora-copy', readAdapterFolder(join(ROOT, 'adapters', 'pos-lora'))).tensors;
  const batch = loraCases.map((c, i) => {
    const it = items[cases.indexOf(c)];
    return c.adapter === 'pos-lora' && i % 2 === 0 ? { ...it, adapter: copy } : it;
  });
  t.ok(batch.some((it) => it.adapter === copy) && batch.some((it) => it.adapter?.kind === 'lora' && it.adapter !== copy), 'both LoRA keys in the batch');
  const all = await lastLogits([...batch, items[0]]);
  [...loraCases, cases[0]].forEach((c, i) => {
    const err = relErr(all[i], refLogits(c));
    t.ok(err < 1e-4, `${c.adapter ?? 'base'} ${JSON.stringify(c.text)}: ${err.toExponential(2)}`);
  });
});

/** Every way to split `n` units into runs (set partitions; Bell(7) = 877 at most here). */
function partitions(n: number): number[][][] {
  if (n === 0) return [[]];
  return partitions(n - 1).flatMap((p) => [...p.map((_, k) => p.map((run, j) => (j === k ? [...run, n - 1] : run))), [...p, [n - 1]]]);
}

t.test('lengthRuns: the cheapest split of the rows into runs, by exhaustive search', async (t) => {
  const costOf = (units: { rows: number; width: number }[], runs: number[][], runCost: number) =>
    runs.reduce((sum, run) => sum + runCost + run.reduce((r, u) => r + units[u].rows, 0) * Math.max(...run.map((u) => units[u].width)), 0);
  let seed = 7;
  const rand = (n: number) => ((seed = (seed * 48271) % 2147483647), seed % n); // Park–Miller: exact in doubles
  for (let trial = 0; trial < 60; trial++) {
    const units = Array.from({ length: 1 + (trial % 7) }, () => ({ rows: 1 + rand(3), width: 1 + rand(40) }));
    const runCost = [0, 8, 24, 100][trial % 4];
    const runs = lengthRuns(units, runCost);
    t.same(runs.flat().sort((a, b) => a - b), units.map((_, i) => i), `trial ${trial}: every unit in one run`);
    const best = Math.min(...partitions(units.length).map((p) => costOf(units, p, runCost)));
    t.equal(costOf(units, runs, runCost), best, `trial ${trial}: ${JSON.stringify(units)}, run cost ${runCost}`);
  }
});

t.test('lengthRuns: equal lengths share a run; far apart, they split; Infinity keeps one run; none, none', async (t) => {
  const u = (...widths: number[]) => widths.map((width) => ({ rows: 1, width }));
  t.same(lengthRuns(u(9, 9, 9, 9)), [[0, 1, 2, 3]]);
  t.same(lengthRuns(u(60, 5, 60, 5, 5, 60, 5, 60)), [[1, 3, 4, 6], [0, 2, 5, 7]], '4 × 5 + 4 × 60 + 2 × 24 = 308 positions, against 8 × 60 + 24 = 504');
  t.same(lengthRuns(u(6, 5, 7), 24), [[1, 0, 2]], 'two padded positions do not pay for a run');
  t.same(lengthRuns(u(60, 5, 5), Infinity), [[1, 2, 0]]);
  t.same(lengthRuns([]), []);
});
