import t from 'tap';
import { encodeSafetensors, parseSafetensors } from '../../src/model/safetensors.js';
import { adapterFiles, adaptersCopy, multipart, reference, startServer } from '../helpers.js';

const dir = adaptersCopy(['pos-bitfit']);
const env = { ADAPTERS_DIR: dir, ADMIN_TOKEN: 'secret-admin', MAX_ADAPTER_BYTES: String(400 * 1024) };
let server = await startServer(env);
t.teardown(() => server.close());
const auth = { authorization: 'Bearer secret-admin' };

const upload = (task: string, files: Record<string, Buffer | Uint8Array>, headers: Record<string, string> = auth) => {
  const body = multipart(files);
  return server.app.inject({ method: 'PUT', url: `/v1/adapters/${task}`, payload: body.payload, headers: { ...body.headers, ...headers } });
};
const generate = (task: string, prompt: string) =>
  server.app.inject({ method: 'POST', url: `/v1/tasks/${task}/generate`, payload: { prompt, raw: true, max_tokens: 20, temperature: 0 } });
const greedyOf = (adapter: string, text: string) => {
  const c = reference.cases.find((x) => x.adapter === adapter && x.text === text)!;
  return c.greedy.at(-1) === 0 ? c.greedy.slice(0, -1) : c.greedy;
};

t.test('admin routes need the bearer token', async (t) => {
  t.equal((await server.app.inject({ method: 'GET', url: '/v1/adapters' })).statusCode, 401);
  t.equal((await server.app.inject({ method: 'GET', url: '/v1/adapters', headers: { authorization: 'Bearer wrong' } })).statusCode, 401);
  const res = await upload('mine', adapterFiles('kjv-prompt'), { authorization: 'Bearer nope' });
  t.equal(res.statusCode, 401);
  t.equal(res.json().error.code, 'unauthorized');
  t.equal((await server.app.inject({ method: 'GET', url: '/v1/adapters', headers: auth })).statusCode, 200);
});

t.test('upload, then serve: output equals the reference of the uploaded adapter', async (t) => {
  const res = await upload('my-kjv', adapterFiles('kjv-prompt'));
  t.equal(res.statusCode, 201);
  t.match(res.json(), { task: 'my-kjv', peft_type: 'PROMPT_TUNING', kind: 'generation' });
  const gen = await generate('my-kjv', 'And the LORD said unto Moses');
  t.same(gen.json().token_ids, greedyOf('kjv-prompt', 'And the LORD said unto Moses'));
  t.equal(gen.json().adapter_version, res.json().version);
  const list = (await server.app.inject({ method: 'GET', url: '/v1/adapters', headers: auth })).json();
  t.ok(list.adapters.some((a: { task: string }) => a.task === 'my-kjv'));
  const one = await server.app.inject({ method: 'GET', url: '/v1/adapters/my-kjv', headers: auth });
  t.equal(one.json().version, res.json().version);
});

t.test('replace: 200, a new version, and the new adapter serves', async (t) => {
  const res = await upload('my-kjv', adapterFiles('define-prefix'));
  t.equal(res.statusCode, 200);
  const gen = await generate('my-kjv', 'ocean:');
  t.same(gen.json().token_ids, greedyOf('define-prefix', 'ocean:'));
  t.equal(gen.json().adapter_version, res.json().version);
});

t.test('replace under concurrent load: no failures, each output matches the version it names', async (t) => {
  const a = (await upload('swap', adapterFiles('kjv-prompt'))).json().version;
  const b = (await upload('swap', adapterFiles('fortune-ptuning'))).json().version;
  const expected: Record<string, number[]> = { [a]: greedyOf('kjv-prompt', 'You will'), [b]: greedyOf('fortune-ptuning', 'You will') };
  let swapping = true;
  const swapper = (async () => {
    for (let i = 0; swapping; i++) {
      const r = await upload('swap', adapterFiles(i % 2 ? 'kjv-prompt' : 'fortune-ptuning'));
      if (r.statusCode !== 200) throw new Error(`swap failed: ${r.body}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  const results = await Promise.all(Array.from({ length: 48 }, () => generate('swap', 'You will')));
  swapping = false;
  await swapper;
  const seen = new Set<string>();
  for (const r of results) {
    t.equal(r.statusCode, 200);
    const v = r.json().adapter_version;
    seen.add(v);
    t.same(r.json().token_ids, expected[v], `output matches version ${v}`);
  }
  t.ok(seen.size >= 1);
});

t.test('delete, then 404; base is reserved', async (t) => {
  t.equal((await server.app.inject({ method: 'DELETE', url: '/v1/adapters/my-kjv', headers: auth })).statusCode, 204);
  t.equal((await generate('my-kjv', 'x')).statusCode, 404);
  t.equal((await server.app.inject({ method: 'GET', url: '/v1/adapters/my-kjv', headers: auth })).statusCode, 404);
  t.equal((await server.app.inject({ method: 'DELETE', url: '/v1/adapters/my-kjv', headers: auth })).statusCode, 404);
  t.equal((await upload('base', adapterFiles('kjv-prompt'))).statusCode, 409);
  t.equal((await server.app.inject({ method: 'DELETE', url: '/v1/adapters/base', headers: auth })).statusCode, 409);
  t.equal((await upload('Bad_Id', adapterFiles('kjv-prompt'))).statusCode, 400);
});

t.test('every bad upload gets 400 or 413 and leaves the served adapter unchanged', async (t) => {
  const good = adapterFiles('pos-prefix');
  const before = (await upload('target', good)).json().version;
  const weights = good['adapter_model.safetensors'];
  const { tensors } = parseSafetensors(weights);
  const emb = tensors.get('prompt_embeddings')!;
  const nan = new Float32Array(emb.data);
  nan[5] = NaN;
  const headerTooLong = Buffer.from(weights);
  headerTooLong.writeBigUInt64LE(BigInt(weights.length + 10), 0);
  const cases: [string, Record<string, Buffer | Uint8Array>, number][] = [
    ['truncated file', { ...good, 'adapter_model.safetensors': weights.subarray(0, weights.length - 100) }, 400],
    ['NaN', { ...good, 'adapter_model.safetensors': encodeSafetensors({ prompt_embeddings: { shape: emb.shape, data: nan } }) }, 400],
    ['wrong shape', { ...good, 'adapter_model.safetensors': encodeSafetensors({ prompt_embeddings: { shape: [emb.shape[0], 256], data: emb.data.slice(0, emb.shape[0] * 256) } }) }, 400],
    ['invalid JSON', { ...good, 'adapter_config.json': Buffer.from('{"peft_type": "PREFIX_') }, 400],
    ['header length larger than the file', { ...good, 'adapter_model.safetensors': headerTooLong }, 400],
    ['missing file', { 'adapter_config.json': good['adapter_config.json'] }, 400],
    ['an unexpected part', { 'adapter_config.json': good['adapter_config.json'], 'notes.txt': Buffer.alloc(10), 'adapter_model.safetensors': weights }, 400],
    ['extra huge parts', { ...good, 'extra-1': Buffer.alloc(600 * 1024), 'extra-2': Buffer.alloc(600 * 1024) }, 413],
    ['a part over MAX_ADAPTER_BYTES', { ...good, 'adapter_model.safetensors': Buffer.alloc(500 * 1024) }, 413],
    ['DoRA', { ...adapterFiles('pos-lora'), 'adapter_config.json': Buffer.from(JSON.stringify({ ...JSON.parse(adapterFiles('pos-lora')['adapter_config.json'].toString('utf8')), use_dora: true })) }, 400],
  ];
  for (const [name, files, status] of cases) {
    const res = await upload('target', files);
    t.equal(res.statusCode, status, name);
    if (status === 400) t.equal(res.json().error.code, 'invalid_adapter', `${name}: ${res.json().error.message}`);
    const now = await server.app.inject({ method: 'GET', url: '/v1/adapters/target', headers: auth });
    t.equal(now.json().version, before, `${name}: registry unchanged`);
  }
  const notMultipart = await server.app.inject({ method: 'PUT', url: '/v1/adapters/target', payload: { a: 1 }, headers: auth });
  t.equal(notMultipart.statusCode, 400);
  const gen = await generate('target', 'happily ->');
  t.same(gen.json().token_ids, greedyOf('pos-prefix', 'happily ->'), 'the old version still serves');
});

t.test('the filesystem registry survives a restart', async (t) => {
  const version = (await server.app.inject({ method: 'GET', url: '/v1/adapters/target', headers: auth })).json().version;
  await server.close();
  server = await startServer(env);
  const after = await server.app.inject({ method: 'GET', url: '/v1/adapters/target', headers: auth });
  t.equal(after.json().version, version);
  t.same((await generate('target', 'happily ->')).json().token_ids, greedyOf('pos-prefix', 'happily ->'));
});
