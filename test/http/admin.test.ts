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
  // Waves of requests while the swapper runs, until both versions have served (bounded).
  const results = [];
  const seen = new Set<string>();
  for (let wave = 0; wave < 40 && (wave < 6 || seen.size < 2); wave++) {
    const batch = await Promise.all(Array.from({ length: 8 }, () => generate('swap', 'You will')));
    for (const r of batch) if (r.statusCode === 200) seen.add(r.json().adapter_version);
    results.push(...batch);
  }
  swapping = false;
  await swapper;
  for (const r of results) {
    t.equal(r.statusCode, 200);
    const v = r.json().adapter_version;
    t.same(r.json().token_ids, expected[v], `output matches version ${v}`);
  }
  t.ok(seen.size >= 2, `both versions served during the swaps (${seen.size} seen)`);
});

t.test('the list pages in task-id order: limit and after, has_more; bad values are 400', async (t) => {
  for (const task of ['page-b', 'page-a', 'page-c.x', 'page-c-x', 'page-c_x']) t.equal((await upload(task, adapterFiles('kjv-prompt'))).statusCode, 201, task);
  const list = async (query: string) => {
    const res = await server.app.inject({ method: 'GET', url: `/v1/adapters${query}`, headers: auth });
    t.equal(res.statusCode, 200, query);
    return res.json() as { adapters: { task: string }[]; has_more: boolean };
  };
  const all = await list('');
  const tasks = all.adapters.map((a) => a.task);
  t.equal(all.has_more, false);
  t.same(tasks, [...tasks].sort(), 'code-unit order, the order the cursor compares in');
  t.ok(tasks.indexOf('page-c-x') < tasks.indexOf('page-c.x') && tasks.indexOf('page-c.x') < tasks.indexOf('page-c_x'), tasks.join(' '));
  // Two at a time from the start: the pages join up to the whole list, each but the last saying more follow.
  const pages: string[][] = [];
  let after: string | undefined;
  for (;;) {
    const page = await list(`?limit=2${after === undefined ? '' : `&after=${encodeURIComponent(after)}`}`);
    pages.push(page.adapters.map((a) => a.task));
    t.ok(page.adapters.length <= 2);
    if (!page.has_more) break;
    after = page.adapters.at(-1)!.task;
  }
  t.same(pages.flat(), tasks, 'the pages, joined, are the list');
  t.equal(pages.length, Math.ceil(tasks.length / 2));
  t.same((await list('?after=page-b')).adapters.map((a) => a.task), tasks.filter((x) => x > 'page-b'), 'a cursor that is no task id works too');
  t.same((await list(`?after=${tasks.at(-1)}`)).adapters, [], 'after the last: empty');
  for (const bad of ['?limit=0', '?limit=1001', '?limit=x', '?limit=1.5', `?after=${'a'.repeat(129)}`]) {
    const res = await server.app.inject({ method: 'GET', url: `/v1/adapters${bad}`, headers: auth });
    t.equal(res.statusCode, 400, bad);
    t.equal(res.json().error.code, 'invalid_request', bad);
  }
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
  const config = JSON.parse(good['adapter_config.json'].toString());
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
    ['extra huge parts', { ...good, 'extra-1': Buffer.alloc(600 * 1024), 'extra-2': Buffer.alloc(600 * 1024) }, 400],
    ...['toString', 'valueOf', 'constructor', '__proto__', 'hasOwnProperty'].map((p): [string, Record<string, Buffer>, number] => [`peft_type ${p}`, { ...good, 'adapter_config.json': Buffer.from(JSON.stringify({ ...config, peft_type: p })) }, 400]),
    ['peft_type as an array', { ...good, 'adapter_config.json': Buffer.from(JSON.stringify({ ...config, peft_type: ['PREFIX_TUNING'] })) }, 400],
    ['num_virtual_tokens as a string', { ...good, 'adapter_config.json': Buffer.from(JSON.stringify({ ...config, num_virtual_tokens: '16' })) }, 400],
    ['a config with __proto__ keys', { ...good, 'adapter_config.json': Buffer.from(`{"__proto__": {"peft_type": "PREFIX_TUNING"}, "peft_type": "__proto__"}`) }, 400],
    ['a 2 MB prompt_template', { ...good, 'task.json': Buffer.from(JSON.stringify({ kind: 'generation', prompt_template: 'x'.repeat(2_000_000) + '{text}' })) }, 413],
    ['a 20,000-character prompt_template', { ...good, 'task.json': Buffer.from(JSON.stringify({ kind: 'generation', prompt_template: 'x'.repeat(20_000) + '{text}' })) }, 400],
    ['a template that fills the context', { ...good, 'task.json': Buffer.from(JSON.stringify({ kind: 'generation', prompt_template: 'the '.repeat(600) + '{text}' })) }, 400],
    ['a 100,000-character label', { ...good, 'task.json': Buffer.from(JSON.stringify({ kind: 'classification', labels: ['a', 'b'.repeat(100_000)] })) }, 400],
    ['65 labels', { ...good, 'task.json': Buffer.from(JSON.stringify({ kind: 'classification', labels: Array.from({ length: 65 }, (_, i) => `l${i}`) })) }, 400],
    ['task.json as an array', { ...good, 'task.json': Buffer.from('[]') }, 400],
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

/** A raw multipart body: parts given as [name, data, isFile], in order. */
function rawMultipart(parts: [string, string | Buffer, boolean][], boundary = 'sps-raw-boundary'): Buffer {
  const chunks: Buffer[] = [];
  for (const [name, data, isFile] of parts) {
    const disposition = isFile ? `form-data; name="${name}"; filename="${name}"` : `form-data; name="${name}"`;
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: ${disposition}\r\n\r\n`), Buffer.from(data), Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return Buffer.concat(chunks);
}

t.test('multipart mistakes are 400 with a message that says what to send', async (t) => {
  const good = adapterFiles('pos-prefix');
  const before = (await upload('target', good)).json().version;
  const put = (payload: Buffer, contentType: string) => server.app.inject({ method: 'PUT', url: '/v1/adapters/target', payload, headers: { ...auth, 'content-type': contentType } });
  const files = Object.entries(good).map(([n, d]): [string, Buffer, boolean] => [n, d, true]);
  const cases: [string, Buffer, string, RegExp][] = [
    // What `curl -F 'adapter_config.json=<file'` sends: the contents as a form field.
    ['a form field where a file is expected', rawMultipart([['adapter_config.json', good['adapter_config.json'].toString(), false], ...files.slice(1)]), 'multipart/form-data; boundary=sps-raw-boundary', /form field, not a file.*@/],
    ['multipart/form-data without a boundary', rawMultipart(files), 'multipart/form-data', /boundary/],
    ['a form field after the files', rawMultipart([...files, ['note', 'hello', false]]), 'multipart/form-data; boundary=sps-raw-boundary', /unexpected part 'note'/],
    ['a file twice', rawMultipart([...files, files[0]]), 'multipart/form-data; boundary=sps-raw-boundary', /./],
    ['a truncated body', rawMultipart(files).subarray(0, 300), 'multipart/form-data; boundary=sps-raw-boundary', /./],
  ];
  for (const [name, payload, type, message] of cases) {
    const res = await put(payload, type);
    t.equal(res.statusCode, 400, name);
    t.match(res.json().error.message, message, `${name}: ${res.json().error.message}`);
    t.match(res.json().error.code, /^(invalid_adapter|invalid_request)$/, name);
    t.equal((await server.app.inject({ method: 'GET', url: '/v1/adapters/target', headers: auth })).json().version, before, `${name}: registry unchanged`);
  }
});

t.test('the filesystem registry survives a restart', async (t) => {
  const version = (await server.app.inject({ method: 'GET', url: '/v1/adapters/target', headers: auth })).json().version;
  await server.close();
  server = await startServer(env);
  const after = await server.app.inject({ method: 'GET', url: '/v1/adapters/target', headers: auth });
  t.equal(after.json().version, version);
  t.same((await generate('target', 'happily ->')).json().token_ids, greedyOf('pos-prefix', 'happily ->'));
});
