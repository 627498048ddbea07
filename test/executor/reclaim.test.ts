import { Worker } from 'node:worker_threads';
import t from 'tap';
import { Reclaimer } from '../../src/executor/reclaim.js';

t.test('collects once the bytes forgotten since the last collection pass the bound', async (t) => {
  let runs = 0;
  const r = new Reclaimer(100, () => runs++);
  t.notOk(r.collect(0), 'nothing forgotten');
  t.notOk(r.collect(99));
  t.ok(r.collect(100), 'at the bound');
  t.notOk(r.collect(150), '50 since the last');
  t.ok(r.collect(260));
  t.equal(runs, 2);
  t.equal(r.collections, 2);
});

t.test("in a worker thread, its collection frees a SharedArrayBuffer the worker let go of (the process has no --expose-gc)", async (t) => {
  t.equal((globalThis as { gc?: unknown }).gc, undefined, 'this test process runs without --expose-gc');
  // The worker drops its only handle on a SharedArrayBuffer, then lets one step pass with and one
  // without the Reclaimer's collection: a FinalizationRegistry callback says whether it was collected.
  const code = `
    const { parentPort } = require('node:worker_threads');
    (async () => {
      const { Reclaimer } = await import(${JSON.stringify(new URL('../../src/executor/reclaim.js', import.meta.url).href)});
      const reclaim = new Reclaimer(1);
      let freed = false;
      const registry = new FinalizationRegistry(() => (freed = true));
      (() => registry.register(new Float32Array(new SharedArrayBuffer(8 << 20)), 'sab'))();
      const tick = () => new Promise((r) => setTimeout(r, 20));
      await tick();
      const before = freed;
      const collected = reclaim.collect(8 << 20);
      await tick();
      parentPort.postMessage({ before, collected, after: freed });
    })().catch((e) => parentPort.postMessage({ error: String(e) }));`;
  const w = new Worker(code, { eval: true });
  const got = await new Promise<Record<string, unknown>>((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
  await w.terminate();
  t.same(got, { before: false, collected: true, after: true });
});
