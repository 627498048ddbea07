import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import t from 'tap';
import { FormatError } from '../../src/errors.js';
import { FeedContext } from '../../src/executor/model-constants.js';
import { openSessions } from '../../src/executor/sessions.js';
import { loadBaseModel } from '../../src/model/base-model.js';
import { loadCheckpoint, parseConfig } from '../../src/model/checkpoint.js';
import { cachedGraphPath } from '../../src/model/graph-cache.js';
import { PRESETS, writeRandomCheckpoint, type RandomCheckpoint } from '../../src/tools/random-checkpoint.js';
import { prefillLogits, ROOT } from '../helpers.js';

const demo = JSON.parse(readFileSync(join(ROOT, 'models', 'demo-gpt2', 'config.json'), 'utf8'));
const tmp = (prefix: string) => mkdtempSync(join(tmpdir(), prefix));

t.test('a model_type with no builder is an unsupported architecture, named with the supported ones', async (t) => {
  try {
    parseConfig({ ...demo, model_type: 'bert' });
    t.fail('bert was accepted');
  } catch (e) {
    t.ok(e instanceof FormatError);
    t.equal((e as FormatError).code, 'unsupported_architecture');
    t.match((e as Error).message, /unsupported architecture: model_type 'bert' \(supported: gpt2, llama, mistral, qwen2\)/);
  }
  t.throws(() => parseConfig({ ...demo, activation_function: 'relu' }), { code: 'unsupported_architecture' });
  t.equal(parseConfig(demo).headDim, 64);
  t.equal(parseConfig(demo).kvHeads, parseConfig(demo).heads);
});

t.test('the graph is built once, its weights in a side file, and then read from the cache', async (t) => {
  const ckpt = loadCheckpoint(join(ROOT, 'models', 'demo-gpt2'));
  const dir = tmp('graph-');
  const first = cachedGraphPath(ckpt, dir);
  t.ok(first.built);
  t.ok(statSync(`${first.path}.data`).size > statSync(first.path).size * 10, 'weights are external data, the graph only references them');
  // The base graph beside it reads the same side file: the weights are stored once for both.
  const baseGraph = readFileSync(first.basePath!);
  t.ok(statSync(`${first.path}.data`).size > baseGraph.length * 10, 'the base graph only references weights too');
  t.ok(baseGraph.includes(Buffer.from(basename(`${first.path}.data`))), 'in the full graph\'s side file');
  t.notOk(existsSync(`${first.basePath!}.data`), 'which is the only one');
  const mtime = statSync(first.path).mtimeMs;
  const second = cachedGraphPath(ckpt, dir);
  t.notOk(second.built);
  t.equal(second.path, first.path);
  t.equal(statSync(second.path).mtimeMs, mtime);
  t.match(first.path, new RegExp(ckpt.hash.slice(0, 16)), 'keyed by the checkpoint hash');
});

const bytes = (x: Float32Array) => Buffer.from(x.buffer, x.byteOffset, x.byteLength);

/** Logits of a fixed prompt through the checkpoint's graph. */
async function logits(dir: string): Promise<Float32Array> {
  const model = loadBaseModel(dir, tmp('graph-'));
  const { rows } = await prefillLogits(await openSessions(model), new FeedContext(model.tensors), [{ adapter: null, tokens: [5, 17, 300, 2], logitAt: [3] }]);
  return rows[0];
}

for (const dtype of ['BF16', 'F16'] as const) {
  t.test(`a sharded ${dtype} checkpoint loads as the float32 one of the same values`, async (t) => {
    const write = (o: Partial<RandomCheckpoint>) => {
      const dir = tmp('ckpt-');
      writeRandomCheckpoint({ dir, config: PRESETS.tiny, seed: 7, ...o });
      return dir;
    };
    const sharded = write({ dtype, shards: 3 });
    const single = write({ dtype: 'F32', precision: dtype });
    t.ok(existsSync(join(sharded, 'model-00003-of-00003.safetensors')) && existsSync(join(sharded, 'model.safetensors.index.json')));
    t.ok(statSync(join(sharded, 'model-00001-of-00003.safetensors')).size < statSync(join(single, 'model.safetensors')).size / 4, '2-byte values in three shards');
    const a = loadCheckpoint(sharded);
    const b = loadCheckpoint(single);
    let compared = 0;
    for (const name of a.arch.weightShapes(a.config).keys()) {
      t.ok(bytes(a.weights.read(name)).equals(bytes(b.weights.read(name))), name);
      compared++;
    }
    t.equal(compared, 2 * 9 + 3, 'every tensor of two layers, the embeddings, the final norm and the head');
    t.ok(bytes(await logits(sharded)).equals(bytes(await logits(single))), 'same logits');
  });
}

t.test('a broken checkpoint is refused with the code of what is wrong', async (t) => {
  const dir = tmp('ckpt-');
  writeRandomCheckpoint({ dir, config: PRESETS.tiny, shards: 2 });
  const index = join(dir, 'model.safetensors.index.json');
  const good = readFileSync(index, 'utf8');
  writeFileSync(index, JSON.stringify({ weight_map: { 'model.norm.weight': '../elsewhere.safetensors' } }));
  t.throws(() => loadCheckpoint(dir), { code: 'invalid_index' });
  writeFileSync(index, JSON.stringify({ weight_map: { 'model.norm.weight': 'model-00001-of-00002.safetensors' } }));
  t.throws(() => loadCheckpoint(dir), { code: 'missing_weight' }, 'a shard the index leaves out is not read');
  writeFileSync(index, good);
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...PRESETS.tiny, intermediate_size: 128 }));
  t.throws(() => loadCheckpoint(dir), { code: 'weight_shape', message: /mlp\.gate_proj\.weight' has shape \[160,64\], expected \[128,64\]/ });
});
