import { createHash } from 'node:crypto';
import { join } from 'node:path';
import t from 'tap';
import { adapterParser, type Adapter, type AdapterFiles } from '../../src/adapters/format.js';
import { readAdapterFolder } from '../../src/adapters/fs-store.js';
import { AdapterParser } from '../../src/adapters/parser.js';
import { FormatError, ServerError } from '../../src/errors.js';
import { loadBaseModel } from '../../src/model/base-model.js';
import { encodeSafetensors, parseSafetensors } from '../../src/model/safetensors.js';
import { ROOT } from '../helpers.js';

const model = loadBaseModel(join(ROOT, 'models', 'demo-gpt2'), join(ROOT, '.cache'));
const inline = adapterParser(model);
const base = { config: model.config, biases: model.tensors.biases, encode: (s: string) => model.tokenizer.encodeSync(s) };
const folder = (name: string) => readAdapterFolder(join(ROOT, 'adapters', name));
const KINDS = ['define-prefix', 'fortune-ptuning', 'kjv-prompt', 'pos-bitfit', 'pos-ia3', 'pos-lora', 'pos-prefix', 'pos-prompt', 'pos-ptuning'];
const CREATED = '2026-01-01T00:00:00.000Z';

/** A digest of each of an adapter's tensors, by path, to compare two parses bit for bit. */
function floats(a: Adapter): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (path: string, v: unknown) => {
    if (v instanceof Float32Array) out[path] = `${v.length}:${createHash('sha256').update(v).digest('hex')}`;
    else if (v && typeof v === 'object') for (const k of Object.keys(v).sort()) walk(`${path}.${k}`, (v as Record<string, unknown>)[k]);
  };
  walk('', a.tensors);
  return out;
}

/** pos-lora at rank `r`: random factors, so the parse has megabytes to read. */
function bigLora(r: number): AdapterFiles {
  const src = parseSafetensors(folder('pos-lora').weights).tensors;
  const out: Record<string, { shape: number[]; data: Float32Array }> = {};
  let seed = 1;
  for (const [name, t] of src) {
    const shape = t.shape.map((d) => (d === 8 ? r : d));
    const data = new Float32Array(shape[0] * shape[1]).map(() => ((seed = (seed * 16807) % 2147483647) / 2147483647 - 0.5) * 0.02);
    out[name] = { shape, data };
  }
  const config = { ...JSON.parse(folder('pos-lora').config.toString('utf8')), r };
  return { config: Buffer.from(JSON.stringify(config)), weights: Buffer.from(encodeSafetensors(out)), task: folder('pos-lora').task };
}

t.test('the worker parses every adapter kind to what the inline parser gives', async (t) => {
  const parser = new AdapterParser(base, 0);
  t.teardown(() => parser.close());
  for (const name of KINDS) {
    const files = folder(name);
    const want = inline(name, files);
    const got = await parser.parse(name, files, want.createdAt);
    t.same({ ...got, tensors: undefined }, { ...want, tensors: undefined }, `${name}: version, spec, sizes`);
    t.equal(got.tensors.key, want.tensors.key, `${name}: key`);
    t.same(floats(got), floats(want), `${name}: tensors`);
    t.ok(Object.keys(floats(got)).length > 0, `${name}: has tensors`);
  }
});

t.test('a refusal in the worker keeps its code and message; the tokenizer check still applies', async (t) => {
  const parser = new AdapterParser(base, 0);
  t.teardown(() => parser.close());
  const lora = folder('pos-lora');
  const config = JSON.parse(lora.config.toString('utf8'));
  const cases: [string, AdapterFiles][] = [
    ['r differs from the tensors', { ...lora, config: Buffer.from(JSON.stringify({ ...config, r: 4 })) }],
    ['not JSON', { ...lora, config: Buffer.from('{') }],
    ['truncated weights', { ...lora, weights: lora.weights.subarray(0, 1000) }],
    // 500 virtual tokens and a template: no room left in the 512-token context (checkServable, which runs here).
    ['unservable', { config: Buffer.from(JSON.stringify({ peft_type: 'PROMPT_TUNING', num_virtual_tokens: 500 })), weights: Buffer.from(encodeSafetensors({ prompt_embeddings: { shape: [500, 256], data: new Float32Array(500 * 256) } })), task: Buffer.from(JSON.stringify({ prompt_template: 'x '.repeat(20) + '{text}' })) }],
  ];
  for (const [what, files] of cases) {
    let want: unknown;
    try {
      inline('x', files);
    } catch (e) {
      want = e;
    }
    const got = await parser.parse('x', files).catch((e: unknown) => e);
    t.ok(want instanceof FormatError, `${what}: the inline parser refuses it`);
    t.ok(got instanceof FormatError, `${what}: a FormatError`);
    t.same([(got as FormatError).code, (got as FormatError).message], [(want as FormatError).code, (want as FormatError).message], what);
  }
  t.equal(((await parser.parse('x', cases[3][1]).catch((e: unknown) => e)) as FormatError).code, 'unservable_task');
});

t.test('a large adapter is parsed off the event loop; a small one inline', async (t) => {
  const parser = new AdapterParser(base);
  t.teardown(() => parser.close());
  const files = bigLora(128); // 5.6 MB
  t.ok(files.weights.length > 5e6);
  // Event-loop turns taken while the parse runs: an inline parse resolves before the first one.
  const turns = async (p: Promise<Adapter>) => {
    let n = 0;
    let done = false;
    const spin = () => {
      if (done) return;
      n++;
      setImmediate(spin);
    };
    setImmediate(spin);
    const a = await p;
    done = true;
    return { a, n };
  };
  const big = await turns(parser.parse('big', files, CREATED));
  t.ok(big.n >= 10, `the event loop turned ${big.n} times during the large parse`);
  t.same(floats(big.a), floats(inline('big', files)), 'the same tensors as inline');
  const worker = (parser as unknown as { rpc: { worker: unknown } }).rpc.worker;
  t.ok(worker, 'a worker was started for it');
  const small = await turns(parser.parse('pos-prompt', folder('pos-prompt')));
  t.equal(small.n, 0, 'a small adapter parses inline');
});

t.test('a worker that dies mid-parse: parsed again in a new one; dying twice fails the parse (500)', async (t) => {
  const parser = new AdapterParser(base, 0);
  t.teardown(() => parser.close());
  const rpc = (parser as unknown as { rpc: { worker: { terminate: () => Promise<number> } | null; pending: Map<number, unknown> } }).rpc;
  // Kills the worker that holds the parse (once its first slice is on the way), other than `not`.
  const kill = async (not?: unknown) => {
    while (!rpc.worker || rpc.worker === not || rpc.pending.size === 0) await new Promise((r) => setImmediate(r));
    const w = rpc.worker;
    await w.terminate();
    return w;
  };
  const files = bigLora(256);
  const once = parser.parse('big', files);
  await kill();
  t.same(floats(await once), floats(inline('big', files)), 'the retry gave the adapter');
  const twice = parser.parse('big', files);
  await kill(await kill());
  const err = await twice.catch((e: unknown) => e);
  t.ok(err instanceof ServerError && err.code === 'internal_error', String(err));
  t.equal((await parser.parse('pos-lora', folder('pos-lora'))).version, inline('pos-lora', folder('pos-lora')).version, 'the next parse starts a fresh worker');
});

t.test('an idle worker is stopped (it would hold its last files), and the next parse starts one', async (t) => {
  const parser = new AdapterParser(base, 0, 50);
  t.teardown(() => parser.close());
  const rpc = (parser as unknown as { rpc: { worker: unknown } }).rpc;
  await parser.parse('pos-lora', folder('pos-lora'));
  t.ok(rpc.worker, 'running after a parse');
  const t0 = performance.now();
  while (rpc.worker && performance.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 10));
  t.equal(rpc.worker, null, 'stopped once idle');
  t.equal((await parser.parse('pos-lora', folder('pos-lora'))).version, inline('pos-lora', folder('pos-lora')).version);
});

t.test('after close, a parse fails with 503 shutting_down, and so does one in flight', async (t) => {
  const parser = new AdapterParser(base, 0);
  const held = parser.parse('big', bigLora(256)).catch((e: unknown) => e);
  await parser.close();
  t.match(await held, { code: 'shutting_down', status: 503 });
  t.match(await parser.parse('pos-lora', folder('pos-lora')).catch((e: unknown) => e), { code: 'shutting_down' });
});

t.test('an empty task.json reaches the worker as an empty file, not as none', async (t) => {
  const parser = new AdapterParser(base, 0);
  t.teardown(() => parser.close());
  const files = { ...folder('pos-lora'), task: Buffer.alloc(0) };
  const outcome = async (f: () => Promise<Adapter> | Adapter) => {
    try {
      return (await f()).spec;
    } catch (e) {
      return (e as FormatError).code;
    }
  };
  const want = await outcome(() => inline('x', files));
  t.notSame(want, await outcome(() => inline('x', { ...files, task: undefined })), 'inline, an empty task.json is not the same as none');
  t.same(await outcome(() => parser.parse('x', files)), want, `the worker gives the same: ${JSON.stringify(want)}`);
});
