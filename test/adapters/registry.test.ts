import { join } from 'node:path';
import { pino } from 'pino';
import t from 'tap';
import { readAdapterFolder } from '../../src/adapters/fs-store.js';
import { ServerError } from '../../src/errors.js';
import { parseAdapter, type AdapterFiles } from '../../src/adapters/format.js';
import { Registry } from '../../src/adapters/registry.js';
import type { AdapterStore, StoreChange, StoredAdapter, StoredMeta } from '../../src/adapters/store.js';
import { loadBaseModel } from '../../src/model/base-model.js';
import { ROOT } from '../helpers.js';

const model = loadBaseModel(join(ROOT, 'models', 'demo-gpt2'), join(ROOT, '.cache'));
const files = (name: string) => readAdapterFolder(join(ROOT, 'adapters', name));
const metaOf = (task: string, f: AdapterFiles): StoredMeta => {
  const a = parseAdapter(task, f, { config: model.config, biases: model.tensors.biases });
  return { task, version: a.version, peftType: a.peftType, kind: a.spec.kind, bytes: a.bytes, createdAt: a.createdAt };
};

/** A shared store in memory whose loads can be held back, to replay the races of a real Redis. */
class FakeSharedStore implements AdapterStore {
  readonly name = 'fake-shared';
  readonly data = new Map<string, StoredAdapter>();
  listener: ((c: StoreChange | null) => void) | null = null;
  held: (() => void)[] = [];
  holdLoads = false;
  /** Like Redis's epoch key; undefined plays a shared store without one. */
  epochValue: string | undefined = 'first';
  async epoch() {
    return this.epochValue as string; // undefined: as if the method were absent
  }
  async index() {
    return [...this.data.values()].map((s) => s.meta);
  }
  /** Loads fail with this (a Redis that is away). */
  failLoads: Error | null = null;
  async load(task: string) {
    // The read happens now (as Redis answers it); its delivery can be delayed.
    const snapshot = this.data.get(task) ?? null;
    if (this.holdLoads) await new Promise<void>((resolve) => this.held.push(resolve));
    if (this.failLoads) throw this.failLoads;
    return snapshot;
  }
  /** Runs once the store holds a save, before the save's answer reaches the registry. */
  onSave: (() => void) | null = null;
  async save(s: StoredAdapter) {
    const replaced = this.data.has(s.meta.task);
    this.data.set(s.meta.task, s);
    this.onSave?.();
    return { replaced };
  }
  async remove(task: string) {
    return this.data.delete(task);
  }
  watch(on: (c: StoreChange | null) => void) {
    this.listener = on;
  }
  healthy() {
    return true;
  }
  async close() {}
  /** Another replica writes: the store changes, then the announcement arrives. */
  external(task: string, f: AdapterFiles | null, createdAt?: string) {
    const meta = f && { ...metaOf(task, f), ...(createdAt && { createdAt }) };
    if (f) this.data.set(task, { meta: meta!, files: f });
    else this.data.delete(task);
    this.listener!({ task, version: meta?.version ?? null, createdAt: meta?.createdAt });
  }
  release() {
    for (const r of this.held.splice(0)) r();
  }
}

const tick = () => new Promise((r) => setImmediate(r));

async function fresh(parseInlineBytes?: number, cacheBytes?: number) {
  const store = new FakeSharedStore();
  const registry = new Registry(model, store, pino({ level: 'silent' }), cacheBytes, parseInlineBytes);
  await registry.sync(true);
  registry.follow();
  return { store, registry };
}

t.test('a delete announced while the upload before it is still loading wins', async (t) => {
  const { store, registry } = await fresh();
  store.holdLoads = true;
  store.external('racy', files('kjv-prompt')); // replica B starts loading it
  await tick();
  store.external('racy', null); // deleted before that load returned
  store.release();
  await tick();
  await tick();
  t.same(registry.list().map((a) => a.task), [], 'the slow load did not bring the task back');
  await t.rejects(registry.resolve('racy'), { code: 'task_not_found' });
});

t.test('a delete announced while the parser worker decodes the version before it wins', async (t) => {
  const { store, registry } = await fresh(0); // every parse in the worker
  t.teardown(() => registry.stop());
  store.external('racy', files('kjv-prompt'));
  await tick(); // loaded; its parse is in the worker
  store.external('racy', null);
  await tick();
  t.same(registry.list().map((a) => a.task), [], 'the delete applied');
  await registry.parse('probe', files('pos-prompt')); // the worker answers in order: the first parse is done
  await tick();
  t.same(registry.list().map((a) => a.task), [], 'the parse that finished after it did not bring the task back');
});

t.test('a parse that fails for want of a worker keeps the version held; a worker that dies once is retried', async (t) => {
  const { store, registry } = await fresh(0);
  t.teardown(() => registry.stop());
  store.external('kept', files('kjv-prompt'));
  while (!registry.list().length) await tick();
  const held = (await registry.describe('kept')).version;
  // The worker dies in the middle of the next version's parse: parsed again in a new one.
  store.external('kept', files('fortune-ptuning'));
  const rpc = (registry as unknown as { parser: { rpc: { worker: { terminate: () => Promise<number> } | null } } }).parser.rpc;
  while (!rpc.worker) await tick();
  await rpc.worker.terminate();
  const replaced = metaOf('kept', files('fortune-ptuning')).version;
  while ((await registry.describe('kept')).version === held) await tick();
  t.equal((await registry.describe('kept')).version, replaced, 'the retry in a new worker applied the new version');
  // Stopped (shutting down): an announcement's parse fails, and the version held stays served.
  registry.stop();
  store.external('kept', files('pos-prompt'));
  for (let i = 0; i < 20; i++) await tick();
  t.equal((await registry.describe('kept')).version, replaced, 'not dropped for a parse that never ran');
  t.equal((await registry.resolve('kept')).version, replaced);
});

t.test('an upload whose parse is running when the server shuts down gets 503 and stores nothing', async (t) => {
  // Writes refused while the parse runs (the server drains), then the parser stopped with it.
  for (const stop of [false, true]) {
    const { store, registry } = await fresh(0);
    t.teardown(() => registry.stop());
    const upload = registry.upload('late', files('kjv-prompt'));
    registry.refuseWrites();
    if (stop) registry.stop();
    await t.rejects(upload, { code: 'shutting_down', status: 503 }, stop ? 'parser stopped' : 'writes refused');
    t.equal(store.data.has('late'), false);
    t.same(registry.list(), []);
  }
});

t.test('a request admitted after a replacement does not join the reload of the version before it', async (t) => {
  const { store, registry } = await fresh(undefined, 1); // the cache keeps only the adapter it got last
  await registry.upload('t', files('kjv-prompt'));
  await registry.upload('u', files('pos-prompt')); // evicts t
  store.holdLoads = true;
  const before = registry.resolve('t'); // reloads t's first version, held back
  await tick();
  const { info } = await registry.upload('t', files('fortune-ptuning'));
  store.holdLoads = false;
  await registry.upload('w', files('pos-bitfit')); // evicts t's new version
  const after = registry.resolve('t');
  await tick();
  store.release();
  t.equal((await before).version, metaOf('t', files('kjv-prompt')).version);
  t.equal((await after).version, info.version, 'the version it was admitted on');
});

t.test('a task announced by another replica and still loading here is waited for, not 404', async (t) => {
  const { store, registry } = await fresh();
  store.holdLoads = true;
  store.external('new', files('pos-lora'));
  await tick();
  let settled = false;
  const pending = [registry.resolve('new'), registry.describe('new')].map((p) => p.finally(() => (settled = true)));
  for (let i = 0; i < 5; i++) await tick();
  t.equal(settled, false, 'neither answered while the load is held');
  t.equal(registry.has('new'), false, 'not registered before it is parsed');
  store.release();
  const [resolved, described] = await Promise.all(pending);
  const version = metaOf('new', files('pos-lora')).version;
  t.equal((resolved as { version: string }).version, version, 'resolved to the announced version');
  t.equal((described as { version: string }).version, version);
  // A delete sent here during the load waits for it too, then applies.
  store.external('gone', files('pos-prompt'));
  const removed = registry.remove('gone');
  store.release();
  await removed;
  t.equal(store.data.has('gone'), false, 'the delete sent during the load applied');
  // Deleted on the other replica while the load was held: the waiting request gets 404.
  store.external('vanished', files('pos-prompt'));
  const missing = registry.resolve('vanished');
  await tick();
  store.external('vanished', null);
  store.release();
  await t.rejects(missing, { code: 'task_not_found' });
  await t.rejects(registry.resolve('never-announced'), { code: 'task_not_found' }, 'an unknown task is still 404 at once');
});

t.test('announcements that follow one another are all waited for; a load that fails for want of the store answers that, not 404', async (t) => {
  const { store, registry } = await fresh();
  store.holdLoads = true;
  store.external('twice', files('kjv-prompt'));
  const waiting = registry.resolve('twice');
  await tick();
  const first = store.held.splice(0);
  store.external('twice', files('fortune-ptuning')); // replaced before the first load returned
  await tick();
  for (const r of first) r(); // the first load lands: no longer the latest, it applies nothing
  for (let i = 0; i < 5; i++) await tick();
  store.release();
  t.equal((await waiting).version, metaOf('twice', files('fortune-ptuning')).version, 'the request got the version announced last');
  store.failLoads = new ServerError('store_unavailable', 'the adapter store (redis) is unavailable');
  store.external('away', files('pos-prompt'));
  const away = registry.resolve('away');
  store.release();
  await t.rejects(away, { code: 'store_unavailable', status: 503 });
});

/** A fresh registry over a shared store whose loads can fail, counting them. */
async function flaky() {
  const { store, registry } = await fresh();
  t.teardown(() => registry.stop());
  const counted = { loads: 0 };
  const load = store.load.bind(store);
  store.load = (task: string) => (counted.loads++, load(task));
  return { store, registry, counted };
}
const storeAway = () => new ServerError('store_unavailable', 'the adapter store (redis) is unavailable');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('an announced load that failed for want of the store is tried again after 1 s, then 2 s; meanwhile a request gets that 503, not 404', async (t) => {
  const { store, registry, counted } = await flaky();
  store.failLoads = storeAway();
  store.external('late', files('pos-prompt'));
  await t.rejects(registry.resolve('late'), { code: 'store_unavailable' }, 'the waiter gets the failure');
  await t.rejects(registry.resolve('late'), { code: 'store_unavailable' }, 'so does a request after it: the task exists, the store is away');
  await sleep(1500);
  t.equal(counted.loads, 2, 'tried again after 1 s, and failed again');
  await t.rejects(registry.resolve('late'), { code: 'store_unavailable' });
  await sleep(1000);
  t.equal(counted.loads, 2, 'the next try waits 2 s');
  store.failLoads = null;
  const t0 = performance.now();
  while (!registry.has('late') && performance.now() - t0 < 5000) await sleep(50);
  t.equal((await registry.resolve('late')).version, metaOf('late', files('pos-prompt')).version, 'the next try, 2 s after the second, loaded it');
  t.equal(counted.loads, 3);
  store.external('late', null);
  await t.rejects(registry.resolve('late'), { code: 'task_not_found' }, 'a delete after it is a 404: no failure is replayed');
});

t.test('a failed load ends its retries when a later change, a reconcile or stop() comes first; other errors are not retried', async (t) => {
  await t.test('a delete announced while the load was in flight: 404, not the failure', async (t) => {
    const { store, registry } = await flaky();
    store.holdLoads = true;
    store.external('x', files('pos-prompt'));
    await tick();
    store.external('x', null);
    store.failLoads = storeAway();
    store.release();
    await tick();
    await t.rejects(registry.resolve('x'), { code: 'task_not_found' });
  });
  await t.test('a reconcile that finds the task gone from the index: 404 at once', async (t) => {
    const { store, registry } = await flaky();
    store.failLoads = storeAway();
    store.external('y', files('pos-prompt'));
    await t.rejects(registry.resolve('y'), { code: 'store_unavailable' });
    store.data.delete('y'); // deleted, and the announcement lost
    store.failLoads = null;
    await registry.sync(false);
    await t.rejects(registry.resolve('y'), { code: 'task_not_found' });
  });
  await t.test('stop() during the load, and a load failing for another reason: neither is tried again', async (t) => {
    const a = await flaky();
    a.store.holdLoads = true;
    a.store.external('z', files('pos-prompt'));
    await tick();
    a.registry.stop();
    a.store.failLoads = storeAway();
    a.store.release();
    const b = await flaky();
    b.store.failLoads = new ServerError('internal_error', 'the parser worker died twice');
    b.store.external('w', files('pos-prompt'));
    await t.rejects(b.registry.resolve('w'), { code: 'internal_error' });
    await sleep(1500);
    t.same([a.counted.loads, b.counted.loads], [1, 1]);
  });
});

t.test('startup skips, with its reason, a task the index names but whose files the store lacks', async (t) => {
  const store = new FakeSharedStore();
  const f = files('pos-prompt');
  store.data.set('ghost', { meta: metaOf('ghost', f), files: f });
  store.data.set('real', { meta: metaOf('real', f), files: f });
  const load = store.load.bind(store);
  store.load = async (task: string) => (task === 'ghost' ? null : load(task));
  const registry = new Registry(model, store, pino({ level: 'silent' }));
  const { loaded, skipped } = await registry.sync(true);
  t.same(loaded, ['real']);
  t.same(skipped.map((s) => s.task), ['ghost']);
  t.match(skipped[0].reason, /^missing_files:/);
});

t.test('two replacements: the older load returning last does not win', async (t) => {
  const { store, registry } = await fresh();
  store.holdLoads = true;
  store.external('swap', files('kjv-prompt'));
  await tick();
  const first = store.held.splice(0);
  store.external('swap', files('fortune-ptuning'));
  await tick();
  store.release(); // the newer load lands first
  await tick();
  for (const r of first) r(); // then the old one
  await tick();
  await tick();
  t.equal((await registry.describe('swap')).version, metaOf('swap', files('fortune-ptuning')).version);
});

t.test('a local upload racing a delete from another replica ends as the store ends', async (t) => {
  const { store, registry } = await fresh();
  store.onSave = () => store.external('local', null); // announced while the save is in flight
  await registry.upload('local', files('pos-prompt'));
  await tick();
  t.equal(store.data.has('local'), false);
  t.same(registry.list().map((a) => a.task), [], 'the replica agrees with the store');
});

t.test('reconcile drops what the index no longer has, and picks up what it missed', async (t) => {
  const { store, registry } = await fresh();
  await registry.upload('kept', files('pos-prompt'));
  await registry.upload('gone', files('pos-bitfit'));
  store.data.delete('gone'); // a lost announcement
  const f = files('kjv-prompt');
  store.data.set('missed', { meta: metaOf('missed', f), files: f });
  await registry.sync(false);
  t.same(registry.list().map((a) => a.task), ['kept', 'missed']);
  t.equal((await registry.resolve('missed')).version, metaOf('missed', f).version);
});

t.test('an empty shared index (a store without epochs) keeps what is held, counts a reset and asks for a re-seed', async (t) => {
  const { store, registry } = await fresh();
  await registry.upload('held', files('pos-prompt'));
  let reseeds = 0;
  registry.onStoreReset = async () => {
    reseeds++;
    const f = files('kjv-prompt');
    await registry.upload('seeded', f);
  };
  store.epochValue = undefined; // a store without an epoch: judged by its empty index
  store.data.clear(); // restarted without its data
  store.listener!(null); // reconnect: resynchronise
  await tick();
  await tick();
  t.equal(registry.storeResets, 1);
  t.equal(reseeds, 1);
  t.same(registry.list().map((a) => a.task), ['held', 'seeded']);
  t.equal((await registry.resolve('held')).task, 'held', 'still served from memory');
  // The next reconcile sees a non-empty index: the held task stays (an orphan) until deleted.
  await registry.sync(false);
  t.same(registry.list().map((a) => a.task), ['held', 'seeded']);
  store.listener!({ task: 'held', version: null });
  await tick();
  t.same(registry.list().map((a) => a.task), ['seeded']);
});

t.test('a store that lost its data and was partly re-seeded by another replica: held adapters stay', async (t) => {
  const { store, registry } = await fresh();
  await registry.upload('held', files('pos-prompt'));
  await registry.upload('also-held', files('pos-bitfit'));
  store.data.clear();
  store.epochValue = 'second'; // the first replica to reconnect created a new epoch…
  const f = files('kjv-prompt');
  store.data.set('seeded', { meta: metaOf('seeded', f), files: f }); // …and re-seeded a task
  store.listener!(null);
  await tick();
  await tick();
  t.equal(registry.storeResets, 1);
  t.same(registry.list().map((a) => a.task), ['also-held', 'held', 'seeded']);
  await registry.sync(false);
  t.equal(registry.storeResets, 1, 'the same epoch again is no reset');
  t.same(registry.list().map((a) => a.task), ['also-held', 'held', 'seeded']);
});

t.test('startup refuses stored adapters that fail validation, and keeps the rest', async (t) => {
  const store = new FakeSharedStore();
  const good = files('pos-prompt');
  store.data.set('good', { meta: metaOf('good', good), files: good });
  for (const p of ['toString', '__proto__', 'constructor']) {
    const bad = { ...good, config: Buffer.from(JSON.stringify({ ...JSON.parse(good.config.toString()), peft_type: p })) };
    store.data.set(`bad-${p.replace(/_/g, '')}`.toLowerCase(), { meta: { ...metaOf('good', good), task: `bad-${p.replace(/_/g, '')}`.toLowerCase() }, files: bad });
  }
  const registry = new Registry(model, store, pino({ level: 'silent' }));
  const { loaded, skipped } = await registry.sync(true);
  t.same(loaded, ['good']);
  t.equal(skipped.length, 3);
  for (const s of skipped) t.match(s.reason, /invalid_config|unsupported_peft_type/);
});

t.test('shutting down: uploads and deletes are refused with 503 shutting_down, and nothing changes', async (t) => {
  const { registry } = await fresh();
  await registry.upload('kept', files('kjv-prompt'));
  registry.refuseWrites();
  await t.rejects(registry.upload('late', files('kjv-prompt')), { code: 'shutting_down', status: 503 });
  await t.rejects(registry.remove('kept'), { code: 'shutting_down', status: 503 });
  t.same(registry.list().map((a) => a.task), ['kept']);
});

t.test('the same files uploaded again on another replica: the same version, and its new upload time here too', async (t) => {
  const { store, registry } = await fresh();
  store.external('again', files('kjv-prompt'), '2026-01-01T00:00:00.000Z');
  await registry.resolve('again');
  const first = await registry.describe('again');
  t.equal(first.created_at, '2026-01-01T00:00:00.000Z');
  store.external('again', files('kjv-prompt'), '2026-02-02T00:00:00.000Z');
  await tick();
  const second = await registry.describe('again');
  t.equal(second.version, first.version);
  t.equal(second.created_at, '2026-02-02T00:00:00.000Z');
  registry.stop();
});
