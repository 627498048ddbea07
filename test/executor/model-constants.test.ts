import { join } from 'node:path';
import t from 'tap';
import { FeedContext } from '../../src/executor/model-constants.js';
import { ADAPTER_INPUTS } from '../../src/model/adapter-ops.js';
import { loadBaseModel } from '../../src/model/base-model.js';
import type { AdapterTensors } from '../../src/protocol.js';
import { ROOT } from '../helpers.js';

const model = loadBaseModel(join(ROOT, 'models', 'demo-gpt2'), join(ROOT, '.cache'));

t.test('LoRA stacks are kept between steps within the byte bound (ADAPTER_CACHE_BYTES) and 4 sets, the latest always', async (t) => {
  const probe = new FeedContext(model.tensors);
  const m = probe.layout.slots[0];
  const RANK = 4;
  const lora = (key: string): AdapterTensors => ({ key, kind: 'lora', virtualTokens: 0, lora: { rank: RANK, modules: { [m.name]: { a: new Float32Array(m.in * RANK).fill(1), b: new Float32Array(RANK * m.out).fill(1) } } } });
  const [a, b, c, d, e] = ['a', 'b', 'c', 'd', 'e'].map(lora);
  // One adapter's stacks: A [Σin, rank] and B [rank, Σout].
  const one = 4 * RANK * (probe.layout.totalIn + probe.layout.totalOut);
  const ctx = new FeedContext(model.tensors, 2.5 * one);
  const stackA = (adapters: (AdapterTensors | null)[]) => ctx.adapterFeeds(adapters)[ADAPTER_INPUTS.loraA];
  const first = stackA([a]);
  t.equal(stackA([a, null]), first, 'the same set is not built again (rows without LoRA add nothing to it)');
  stackA([b]);
  t.equal(ctx.loraStackBytes, 2 * one);
  stackA([c]);
  t.equal(ctx.loraStackBytes, 2 * one, "a third set's bytes pass the bound: the least recently used one (a) is dropped");
  t.not(stackA([a]), first, 'so it is built again when a row needs it');
  t.equal(ctx.loraStackBytes, 2 * one, 'and b went then');
  const all = stackA([c, b, a]);
  t.equal(all.dims[1], 3 * RANK);
  t.equal(ctx.loraStackBytes, 3 * one, 'a set larger than the bound is kept alone');
  const unbounded = new FeedContext(model.tensors);
  for (const x of [a, b, c, d, e]) unbounded.adapterFeeds([x]);
  t.equal(unbounded.loraStackBytes, 4 * one, 'without a byte bound, 4 sets');
});
