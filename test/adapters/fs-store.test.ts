import { existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { FsStore } from '../../src/adapters/fs-store.js';

const meta = (task: string, version: string) => ({ task, version, peftType: 'PROMPT_TUNING', kind: 'generation', bytes: 3, createdAt: new Date().toISOString() });
const files = (tag: string) => ({ config: Buffer.from(`{"v":"${tag}"}`), weights: Buffer.from(tag) });

t.test('save, replace, remove; no temporary folder is left behind', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-store-'));
  const store = new FsStore(dir);
  t.same(await store.save({ meta: meta('a', 'v1'), files: files('one') }), { replaced: false });
  t.same(await store.save({ meta: meta('a', 'v2'), files: files('two') }), { replaced: true });
  t.equal((await store.load('a'))!.files.weights.toString(), 'two');
  t.equal((await store.index())[0].version, 'v2');
  t.same(readdirSync(dir), ['a']);
  t.ok(await store.remove('a'));
  t.equal(await store.load('a'), null);
  t.same(readdirSync(dir), []);
});

t.test('a crash between the two renames of a save is repaired at start', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-store-'));
  // The old version was moved aside, the new one never arrived: the old one comes back.
  mkdirSync(join(dir, '.old-task-0badc0de'));
  writeFileSync(join(dir, '.old-task-0badc0de', 'adapter_config.json'), '{}');
  writeFileSync(join(dir, '.old-task-0badc0de', 'adapter_model.safetensors'), 'old');
  // A half-written upload is discarded.
  mkdirSync(join(dir, '.tmp-other-12345678'));
  new FsStore(dir);
  t.ok(existsSync(join(dir, 'task', 'adapter_config.json')));
  t.same(readdirSync(dir), ['task']);
});

t.test('loads racing saves and removes of the same task see one whole version or none', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-store-'));
  const store = new FsStore(dir);
  const version = (tag: string) => ({ meta: meta('a', tag), files: { config: Buffer.from(tag), weights: Buffer.alloc(1 << 20, tag), task: Buffer.from(tag) } });
  await store.save(version('x'));
  const seen = { whole: 0, none: 0, mixed: [] as string[], failed: [] as string[] };
  for (let i = 0; i < 60; i++) {
    const write = i % 10 === 9 ? store.remove('a') : store.save(version('xy'[i % 2]));
    // Loads spread over the write's reads, renames and removal: each sees one version's files and meta.
    const loads: Promise<unknown>[] = [];
    for (let k = 0; k < 6; k++) {
      loads.push(
        store.load('a').then(
          (s) => {
            if (!s) return void seen.none++;
            const tags = new Set([s.meta.version, s.files.config.toString(), s.files.task!.toString(), String.fromCharCode(s.files.weights[0])]);
            if (tags.size === 1) seen.whole++;
            else seen.mixed.push([...tags].join());
          },
          (e: Error) => void seen.failed.push(e.message),
        ),
      );
      await new Promise((r) => setImmediate(r));
    }
    await Promise.all([write, ...loads]);
  }
  t.same(seen.mixed, [], 'no load mixed two versions');
  t.same(seen.failed, [], 'no load failed halfway through a rename');
  t.ok(seen.whole > 0 && seen.none > 0, `whole ${seen.whole}, none ${seen.none}`);
  t.same(readdirSync(dir).filter((d) => d.startsWith('.')), [], 'no temporary folder left');
});
