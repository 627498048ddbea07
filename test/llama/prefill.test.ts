import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { adapterParser } from '../../src/adapters/format.js';
import { readAdapterFolder } from '../../src/adapters/fs-store.js';
import { FeedContext, needsFullGraph } from '../../src/executor/model-constants.js';
import { virtualTokens, type PrefillItem } from '../../src/executor/prefill.js';
import { openSessions } from '../../src/executor/sessions.js';
import { loadBaseModel } from '../../src/model/base-model.js';
import { prefillLogits, refLogits, relErr } from '../helpers.js';
import { LLAMA_FIXTURES, LLAMA_MODELS, servedCases } from './reference.js';

// Executor level: the prefill feeds through real ONNX Runtime sessions, full last-position logits
// of every served reference case against the float64 reference: alone on the graph a worker picks
// (the base graph for rows without BitFit, LoRA or IA3) and on the full graph, and all in one batch.
for (const name of LLAMA_MODELS) {
  t.test(name, async (t) => {
    const dir = join(LLAMA_FIXTURES, name);
    const model = loadBaseModel(dir, mkdtempSync(join(tmpdir(), 'llama-graph-')));
    const parse = adapterParser(model);
    const served = await openSessions(model);
    t.ok(served.base, 'the base graph opens beside the full one');
    const ctx = new FeedContext(model.tensors);
    const cases = servedCases(name);
    t.ok(cases.length >= 10, `${cases.length} cases`);
    const items: PrefillItem[] = cases.map((c) => {
      const adapter = c.adapter ? parse(c.adapter, readAdapterFolder(join(dir, 'adapters', c.adapter))).tensors : null;
      return { adapter, tokens: c.ids, logitAt: [virtualTokens(adapter, 'prompt') + c.ids.length - 1] };
    });
    const lastLogits = async (batch: PrefillItem[], sessions = served) => (await prefillLogits(sessions, ctx, batch)).rows;
    const label = (i: number) => `${cases[i].adapter ?? 'base'} ${JSON.stringify(cases[i].text)}`;
    let worst = 0;
    for (let i = 0; i < cases.length; i++) {
      const graph = needsFullGraph([items[i].adapter]) ? 'full' : 'base';
      const [onServed] = await lastLogits([items[i]]);
      const [onFull] = await lastLogits([items[i]], { ...served, base: null });
      const err = relErr(onServed, refLogits(cases[i]));
      worst = Math.max(worst, err);
      t.ok(err < 1e-4, `alone, ${graph} graph: ${label(i)}: ${err.toExponential(2)}`);
      t.ok(Buffer.from(onServed.buffer).equals(Buffer.from(onFull.buffer)), `alone: ${label(i)}: the served and the full graph give the same logits bit for bit`);
    }
    (await lastLogits(items)).forEach((logits, i) => {
      const err = relErr(logits, refLogits(cases[i]));
      worst = Math.max(worst, err);
      t.ok(err < 1e-4, `one mixed batch: ${label(i)}: ${err.toExponential(2)}`);
    });
    t.comment(`${name}: largest relative error ${worst.toExponential(2)}`);
  });
}
