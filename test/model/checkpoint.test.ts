import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { FormatError } from '../../src/errors.js';
import { loadCheckpoint, parseConfig } from '../../src/model/checkpoint.js';
import { cachedGraphPath } from '../../src/model/graph-cache.js';
import { ROOT } from '../helpers.js';

const demo = JSON.parse(readFileSync(join(ROOT, 'models', 'demo-gpt2', 'config.json'), 'utf8'));

t.test('any other model_type is an unsupported architecture', async (t) => {
  try {
    parseConfig({ ...demo, model_type: 'llama' });
    t.fail('llama was accepted');
  } catch (e) {
    t.ok(e instanceof FormatError);
    t.equal((e as FormatError).code, 'unsupported_architecture');
    t.match((e as Error).message, /unsupported architecture: model_type 'llama'/);
  }
  t.throws(() => parseConfig({ ...demo, activation_function: 'relu' }), { code: 'unsupported_architecture' });
  t.equal(parseConfig(demo).headDim, 64);
});

t.test('the graph is built once and then read from the cache', async (t) => {
  const ckpt = loadCheckpoint(join(ROOT, 'models', 'demo-gpt2'));
  const dir = mkdtempSync(join(tmpdir(), 'graph-'));
  const first = cachedGraphPath(ckpt, dir);
  t.ok(first.built);
  const mtime = statSync(first.path).mtimeMs;
  const second = cachedGraphPath(ckpt, dir);
  t.notOk(second.built);
  t.equal(second.path, first.path);
  t.equal(statSync(second.path).mtimeMs, mtime);
  t.match(first.path, new RegExp(ckpt.hash.slice(0, 16)), 'keyed by the checkpoint hash');
});
