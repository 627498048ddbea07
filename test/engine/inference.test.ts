import t from 'tap';
import type { ResolvedTask } from '../../src/adapters/registry.js';
import { startServer } from '../helpers.js';

const server = await startServer({ MAX_SCORE_TOKENS: '2000', REQUEST_TIMEOUT_MS: '3000' });
t.teardown(() => server.close());
const { inference, engine } = server;
const codeOf = (p: Promise<unknown>) => p.then(() => 'ok', (e: { code?: string }) => e.code ?? String(e));

/** Makes `task` resolve to the base model with these adapter tensors, as a poisoned upload would. */
function poison(task: string, tensors: object): void {
  const resolve = server.registry.resolve.bind(server.registry);
  server.registry.resolve = async (name: string): Promise<ResolvedTask> => {
    const base = await resolve('base');
    return name === task ? ({ ...base, task, version: 'poisoned', adapter: { tensors } } as unknown as ResolvedTask) : resolve(name);
  };
}

t.test('a prompt array with one prompt over the context is refused whole before anything is queued', async (t) => {
  let admitted = 0;
  const prev = engine.onStep;
  engine.onStep = (s) => ((admitted += s.plan.prefill.length), prev?.(s));
  t.teardown(() => (engine.onStep = prev));
  const code = await codeOf(inference.generateAll('base', [{ prompt: 'hello', max_tokens: 4 }, { prompt: 'a '.repeat(600), max_tokens: 4 }]));
  t.equal(code, 'prompt_too_long');
  await new Promise((r) => setTimeout(r, 50));
  t.equal(admitted, 0, 'not even the first prompt ran');
});

t.test('when a request times out, every prompt of it is cancelled', async (t) => {
  const cancelled = engine.cancelled;
  const prompts = Array.from({ length: 3 }, (_, i) => ({ prompt: `timeout ${i}`, max_tokens: 450, temperature: 1, ignore_eos: true }));
  const slow = await startServer({ REQUEST_TIMEOUT_MS: '100' });
  t.teardown(() => slow.close());
  t.equal(await codeOf(slow.inference.generateAll('base', prompts)), 'request_timeout');
  for (let i = 0; i < 400 && slow.engine.cancelled < 3; i++) await new Promise((r) => setTimeout(r, 5));
  t.equal(slow.engine.cancelled, 3, 'all three jobs were dropped');
  t.equal(slow.engine.running, 0);
  t.equal(engine.cancelled, cancelled);
});

t.test('a classify that would score more than MAX_SCORE_TOKENS is refused with 413 (finding 11)', async (t) => {
  const input = Array.from({ length: 64 }, (_, i) => `word number ${i} in a somewhat longer input`);
  const err = await inference.classify('pos-bitfit', { input }).catch((e: { code: string; status: number; message: string }) => e);
  t.match(err, { code: 'payload_too_large', status: 413, message: /MAX_SCORE_TOKENS/ });
  t.equal(engine.queueDepth, 0);
  const ok = await inference.classify('pos-bitfit', { input: ['happily'] });
  t.equal(ok.results.length, 1);
});

t.test('a request on a poisoned adapter fails alone; the requests batched with it succeed (finding 5)', async (t) => {
  poison('poisoned', { key: 'poisoned-key', kind: 'prompt', virtualTokens: 4, embeddings: new Float32Array(3) });
  const others = Array.from({ length: 4 }, (_, i) => codeOf(inference.generate('base', { prompt: `neighbour ${i}`, max_tokens: 8, temperature: 0 })));
  const bad = inference.generate('poisoned', { prompt: 'x', max_tokens: 8, temperature: 0 }).catch((e: { code: string; status: number }) => e);
  const scoreBad = inference.score('poisoned', { prompt: 'x', completion: ' y' }).catch((e: { code: string; status: number }) => e);
  t.match(await bad, { code: 'invalid_adapter', status: 400 });
  t.match(await scoreBad, { code: 'invalid_adapter', status: 400 });
  t.same(await Promise.all(others), ['ok', 'ok', 'ok', 'ok']);
});

t.test('streamed text held back for stop strings never ends between the two halves of a character; a stop string with half of one is refused', async (t) => {
  const tokenizer = server.model.tokenizer;
  const stream = tokenizer.stream.bind(tokenizer);
  // Every token decodes to "x👧": a hold-back of one UTF-16 unit would end each chunk inside the emoji.
  tokenizer.stream = () => ({ push: () => 'x👧', flush: () => '' }) as unknown as ReturnType<typeof stream>;
  t.teardown(() => (tokenizer.stream = stream));
  const chunks: string[] = [];
  const r = await inference.generate('base', { prompt: 'hello', max_tokens: 5, temperature: 0, ignore_eos: true, stop: ['zz'] }, { onToken: (_id, text) => chunks.push(text) });
  const lone = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
  t.same(chunks.filter((c) => lone.test(c)), [], 'no chunk holds half a character');
  t.equal(chunks.join(''), r.text);
  t.equal(r.text, 'x👧'.repeat(5));
  t.equal(await codeOf(inference.generate('base', { prompt: 'hello', max_tokens: 5, stop: ['\udc67'] })), 'invalid_request');
});

t.test("a stop string that cuts tokens' text: their offsets end at the text's end, streamed or not", async (t) => {
  const tokenizer = server.model.tokenizer;
  const stream = tokenizer.stream.bind(tokenizer);
  const pieces = () => {
    const texts = ['ab\n', '\ncd', 'ef'];
    let i = 0;
    return { push: () => texts[i++ % texts.length], flush: () => '' } as unknown as ReturnType<typeof stream>;
  };
  tokenizer.stream = pieces;
  t.teardown(() => (tokenizer.stream = stream));
  const streamed: number[] = [];
  const r = await inference.generate('base', { prompt: 'hello', max_tokens: 3, temperature: 0, ignore_eos: true, stop: ['\n\n'], logprobs: 1 }, { onToken: (_id, _text, lp) => lp && streamed.push(lp.offset) });
  t.equal(r.text, 'ab');
  t.same(r.logprobs!.map((l) => l.offset), [0, 2], 'the second token starts where the stop string cut the text');
  t.equal(streamed.at(-1), 2, 'the chunk that found the stop string says so too');
});
