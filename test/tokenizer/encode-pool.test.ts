import { join } from 'node:path';
import t from 'tap';
import { ServerError } from '../../src/errors.js';
import { EncodePool } from '../../src/tokenizer/encode-pool.js';
import { Tokenizer } from '../../src/tokenizer/tokenizer.js';
import { ROOT } from '../helpers.js';

const DEMO = join(ROOT, 'models', 'demo-gpt2');

t.test('encodes in a worker what the tokenizer encodes inline, concurrently and in order of replies', async (t) => {
  const pool = new EncodePool(DEMO);
  t.teardown(() => pool.close());
  const tok = Tokenizer.load(DEMO);
  const texts = ['hello world', 'a<|endoftext|>b', 'naïve café — 東京 🚀', ' '.repeat(3000)];
  const got = await Promise.all(texts.map((s) => pool.encode(s, false)));
  t.same(got, texts.map((s) => tok.encodeSync(s)));
  t.same(await pool.encode('a<|endoftext|>b', true), tok.encodeSync('a<|endoftext|>b', { special: true }));
});

t.test('a worker that dies fails what it held and the next encode starts a fresh one', async (t) => {
  const pool = new EncodePool(DEMO);
  t.teardown(() => pool.close());
  const held = pool.encode('x'.repeat(50_000), false);
  const worker = (pool as unknown as { rpc: { worker: { terminate: () => Promise<number> } } }).rpc.worker;
  await worker.terminate();
  const err = await held.catch((e: unknown) => e);
  t.ok(err instanceof ServerError && err.code === 'internal_error', String(err));
  t.same(await pool.encode('hello', false), Tokenizer.load(DEMO).encodeSync('hello'));
});
