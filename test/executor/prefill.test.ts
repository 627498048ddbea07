import ort from 'onnxruntime-node';
import { join } from 'node:path';
import t from 'tap';
import { adapterParser } from '../../src/adapters/format.js';
import { readAdapterFolder } from '../../src/adapters/fs-store.js';
import { fullLogitsFeeds } from '../../src/executor/head.js';
import { FeedContext } from '../../src/executor/model-constants.js';
import { prefillFeeds, virtualTokens, type PrefillItem } from '../../src/executor/prefill.js';
import { loadBaseModel } from '../../src/model/base-model.js';
import { reference, refLogits, relErr, ROOT, SUPPORTED } from '../helpers.js';

const model = loadBaseModel(join(ROOT, 'models', 'demo-gpt2'), join(ROOT, '.cache'));
const parse = adapterParser(model);
const session = await ort.InferenceSession.create(model.graphPath);
const ctx = new FeedContext(model.tensors);
const cases = reference.cases.filter((c) => SUPPORTED.has(c.adapter));
const items: PrefillItem[] = cases.map((c) => {
  const adapter = c.adapter ? parse(c.adapter, readAdapterFolder(join(ROOT, 'adapters', c.adapter))).tensors : null;
  return { adapter, tokens: c.ids, logitAt: [virtualTokens(adapter, 'prompt') + c.ids.length - 1] };
});

async function lastLogits(batch: PrefillItem[]): Promise<Float32Array[]> {
  const out = await session.run(fullLogitsFeeds(session, prefillFeeds(ctx, batch).feeds));
  const V = model.config.vocabSize;
  const data = out.logits.data as Float32Array;
  return batch.map((_, r) => data.slice(r * V, (r + 1) * V));
}

t.test('last-position logits of every case, alone, within 1e-4', async (t) => {
  for (let i = 0; i < cases.length; i++) {
    const [logits] = await lastLogits([items[i]]);
    const err = relErr(logits, refLogits(cases[i]));
    t.ok(err < 1e-4, `${cases[i].adapter ?? 'base'} ${JSON.stringify(cases[i].text)}: ${err.toExponential(2)}`);
  }
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
