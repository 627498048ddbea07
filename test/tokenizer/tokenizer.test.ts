import { join } from 'node:path';
import t from 'tap';
import { ServerError } from '../../src/errors.js';
import { Tokenizer } from '../../src/tokenizer/tokenizer.js';
import { reference, ROOT, startServer } from '../helpers.js';

const DEMO = join(ROOT, 'models', 'demo-gpt2');
const tok = Tokenizer.load(DEMO);
t.teardown(() => tok.close());

let seed = 99;
const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
const letters = (n: number) => Array.from({ length: n }, () => String.fromCharCode(97 + Math.floor(rnd() * 26))).join('');

t.test('reproduces every tokenizer case of the reference, and decodes back', async (t) => {
  for (const c of reference.tokenizer) {
    t.same(await tok.encode(c.text), c.ids, JSON.stringify(c.text));
    t.equal(tok.decode(c.ids), c.text);
  }
  for (const c of reference.cases) t.same(await tok.encode(c.text), c.ids, `case ${JSON.stringify(c.text)}`);
  t.same(tok.eosTokenIds, [0]);
  t.equal(tok.bosTokenId, null, 'GPT-2 adds no BOS');
});

t.test('special tokens come from user text only when asked', async (t) => {
  const [a, b] = [tok.encodeSync('a'), tok.encodeSync('b')];
  t.same(tok.encodeSync('a<|endoftext|>b', { special: true }), [...a, 0, ...b]);
  const plain = await tok.encode('a<|endoftext|>b');
  t.notOk(plain.includes(0), 'no end-of-text id from plain text');
  t.equal(tok.decode(plain), 'a<|endoftext|>b', 'the special string is ordinary text');
});

t.test('a text over maxChars is refused with 413 before any tokenization', async (t) => {
  const small = Tokenizer.load(DEMO, { maxChars: 1000 });
  const before = small.cacheBytes;
  for (const text of ['x'.repeat(1001), letters(100_000)]) {
    const err = await small.encode(text).catch((e: unknown) => e);
    t.ok(err instanceof ServerError && err.code === 'prompt_too_long' && err.status === 413, (err as Error).message);
  }
  t.equal(small.cacheBytes, before, 'nothing cached from refused texts');
  t.equal((small as unknown as { pool: unknown }).pool, null, 'no worker started for them');
  t.ok(small.encodeSync('x'.repeat(1000)).length > 0, 'the limit itself passes');
});

t.test('a 100,000-character text is encoded off the event loop: timers fire while it runs', async (t) => {
  const text = letters(100_000);
  let fired = 0;
  const timer = setInterval(() => fired++, 5);
  let done = false;
  const pending = tok.encode(text).then((ids) => {
    done = true;
    return ids;
  });
  const firedBefore = await new Promise<number>((resolve) => {
    const poll = setInterval(() => {
      if (done || fired >= 3) {
        clearInterval(poll);
        resolve(done ? -1 : fired);
      }
    }, 1);
  });
  t.ok((await pending).length > 0);
  clearInterval(timer);
  t.ok(firedBefore >= 3, `the event loop ran timers while the encode was pending (fired ${firedBefore})`);
  const mixed = reference.tokenizer.map((c) => c.text).join(' ').repeat(20);
  t.same(await tok.encode(mixed), tok.encodeSync(mixed), 'worker and inline give the same ids');
});

t.test("no stack overflow on long non-ASCII words ('é' × 100,000)", async (t) => {
  const text = 'é'.repeat(100_000);
  const ids = await tok.encode(text);
  t.ok(ids.length > 0);
  t.equal(tok.decode(ids), text);
});

t.test('BPE merging is not quadratic: merge-rank lookups grow linearly with a word', async (t) => {
  const lib = (tok as unknown as { full: { model: { bpe_ranks: Map<string, number> } } }).full.model;
  const ranks = lib.bpe_ranks;
  let lookups = 0;
  const counting = Object.create(ranks) as Map<string, number>;
  counting.get = (k: string) => (lookups++, ranks.get(k));
  lib.bpe_ranks = counting;
  try {
    for (const n of [2_000, 20_000]) {
      lookups = 0;
      tok.encodeSync(letters(n));
      // Each merge looks up at most two new pairs: fewer than 3n in all (a quadratic loop does ~n²/2).
      t.ok(lookups < 3 * n, `${n} letters: ${lookups} rank lookups`);
    }
  } finally {
    lib.bpe_ranks = ranks;
  }
});

t.test('the word cache is bounded in bytes', async (t) => {
  const small = Tokenizer.load(DEMO, { cacheBytes: 64 * 1024 });
  for (let i = 0; i < 3000; i++) small.encodeSync(` ${letters(12)}`);
  t.ok(small.cacheBytes > 32 * 1024 && small.cacheBytes <= 64 * 1024, `${small.cacheBytes} bytes`);
});

t.test('tokenText keeps the text a token has after others', async (t) => {
  const [id] = tok.encodeSync(' ocean');
  t.equal(tok.tokenText(id), tok.decode([id]));
});

t.test('over HTTP: 413 prompt_too_long beyond MAX_PROMPT_CHARS, and /healthz answers while a long prompt is tokenized', async (t) => {
  const server = await startServer({ MAX_PROMPT_CHARS: '50000' });
  t.teardown(() => server.close());
  const tokenizer = server.model.tokenizer;
  const post = (prompt: string) => server.app.inject({ method: 'POST', url: '/v1/tasks/base/generate', payload: { prompt, max_tokens: 1 } });
  const cached = tokenizer.cacheBytes;
  const refused = await post('x'.repeat(50_001));
  t.equal(refused.statusCode, 413);
  t.equal(refused.json().error.code, 'prompt_too_long');
  t.match(refused.json().error.message, /50001 characters; the limit is 50000/);
  t.equal(tokenizer.cacheBytes, cached, 'nothing was tokenized');
  // 20,000 random letters: tokenized in the worker, then refused for the context.
  const inWorker = () => (tokenizer as unknown as { pool: { rpc: { pending: Map<number, unknown> } } | null }).pool?.rpc.pending.size ?? 0;
  let done = false;
  const long = post(letters(20_000)).then((r) => ((done = true), r));
  while (!done && inWorker() === 0) await new Promise((r) => setImmediate(r));
  t.ok(inWorker() > 0, 'the long prompt is being tokenized in the worker');
  t.equal((await server.app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200);
  t.notOk(done, '/healthz answered while the long prompt was still being tokenized');
  t.equal((await long).statusCode, 413, 'over the context');
});

t.test('MAX_PROMPT_CHARS governs every text field, above the default too: 413 on each route beyond it, none below', async (t) => {
  const server = await startServer({ MAX_PROMPT_CHARS: '120000' });
  t.teardown(() => server.close());
  const text = (n: number) => 'a '.repeat(n / 2);
  const bodies = (s: string): [string, object][] => [
    ['/v1/tasks/base/generate', { prompt: s, max_tokens: 1 }],
    ['/v1/tasks/pos-prefix/classify', { input: [s] }],
    ['/v1/tasks/base/score', { prompt: 'x', completion: s }],
    ['/v1/completions', { model: 'base', prompt: s, max_tokens: 1 }],
    ['/v1/tokenize', { model: 'base', prompt: s }],
  ];
  for (const [url, payload] of bodies(text(120_002))) {
    const res = await server.app.inject({ method: 'POST', url, payload });
    t.equal(res.statusCode, 413, `${url}: over the limit`);
    t.equal(res.json().error.code, 'prompt_too_long');
  }
  // Above the old fixed schema limit of 100,000 and within MAX_PROMPT_CHARS: tokenized, then over the context (413) or counted.
  const res = await server.app.inject({ method: 'POST', url: '/v1/tokenize', payload: { model: 'base', prompt: text(110_000) } });
  t.equal(res.statusCode, 200, '110,000 characters are tokenized');
  t.equal(res.json().tokens.length > 50_000, true);
});
