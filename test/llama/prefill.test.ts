import ort from 'onnxruntime-node';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { adapterParser } from '../../src/adapters/format.js';
import { readAdapterFolder } from '../../src/adapters/fs-store.js';
import { fullLogitsFeeds } from '../../src/executor/head.js';
import { FeedContext } from '../../src/executor/model-constants.js';
import { prefillFeeds, virtualTokens, type PrefillItem } from '../../src/executor/prefill.js';
import { loadBaseModel } from '../../src/model/base-model.js';
import { refLogits, relErr } from '../helpers.js';
import { LLAMA_FIXTURES, LLAMA_MODELS, servedCases } from './reference.js';

// Executor level: the prefill feeds through a real ONNX Runtime session, full last-position logits
// of every served reference case against the float64 reference.
for (const name of LLAMA_MODELS) {
  t.test(name, async (t) => {
    const dir = join(LLAMA_FIXTURES, name);
    const model = loadBaseModel(dir, mkdtempSync(join(tmpdir(), 'llama-graph-')));
    const parse = adapterParser(model);
    const session = await ort.InferenceSession.create(model.graphPath);
    const ctx = new FeedContext(model.tensors);
    const cases = servedCases(name);
    t.ok(cases.length >= 10, `${cases.length} cases`);
    const items: PrefillItem[] = cases.map((c) => {
      const adapter = c.adapter ? parse(c.adapter, readAdapterFolder(join(dir, 'adapters', c.adapter))).tensors : null;
      return { adapter, tokens: c.ids, logitAt: [virtualTokens(adapter, 'prompt') + c.ids.length - 1] };
    });
    const lastLogits = async (batch: PrefillItem[]) => {
      const data = (await session.run(fullLogitsFeeds(session, prefillFeeds(ctx, batch).feeds))).logits.data as Float32Array;
      const V = model.config.vocabSize;
      return batch.map((_, r) => data.slice(r * V, (r + 1) * V));
    };
    const label = (i: number) => `${cases[i].adapter ?? 'base'} ${JSON.stringify(cases[i].text)}`;
    let worst = 0;
    for (let i = 0; i < cases.length; i++) {
      const err = relErr((await lastLogits([items[i]]))[0], refLogits(cases[i]));
      worst = Math.max(worst, err);
      t.ok(err < 1e-4, `alone: ${label(i)}: ${err.toExponential(2)}`);
    }
    (await lastLogits(items)).forEach((logits, i) => {
      const err = relErr(logits, refLogits(cases[i]));
      worst = Math.max(worst, err);
      t.ok(err < 1e-4, `one mixed batch: ${label(i)}: ${err.toExponential(2)}`);
    });
    t.comment(`${name}: largest relative error ${worst.toExponential(2)}`);
  });
}
