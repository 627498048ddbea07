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
