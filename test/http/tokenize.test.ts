import t from 'tap';
import { reference, startServer } from '../helpers.js';

const server = await startServer();
t.teardown(() => server.close());
const post = (url: string, payload: object) => server.app.inject({ method: 'POST', url, payload });

t.test('tokenize gives the reference ids; detokenize gives the text back', async (t) => {
  for (const c of reference.tokenizer) {
    const res = await post('/v1/tokenize', { model: 'base', prompt: c.text });
    t.equal(res.statusCode, 200);
    t.same(res.json().tokens, c.ids);
    t.equal(res.json().count, c.ids.length);
    t.equal((await post('/v1/detokenize', { tokens: c.ids })).json().prompt, c.text);
  }
});

t.test("tokenize applies the task's template unless raw, and reports its virtual tokens", async (t) => {
  const tok = server.model.tokenizer;
  const templated = (await post('/v1/tokenize', { model: 'pos-prompt', prompt: 'ocean' })).json();
  t.same(templated.tokens, await tok.encode('ocean ->'));
  t.equal(templated.virtual_tokens, 20);
  t.equal(templated.adapter_version, (await server.registry.describe('pos-prompt')).version);
  t.same((await post('/v1/tokenize', { model: 'pos-prompt', prompt: 'ocean', raw: true })).json().tokens, await tok.encode('ocean'));
  t.equal((await post('/v1/tokenize', { model: 'pos-bitfit', prompt: 'ocean' })).json().virtual_tokens, 0);
});

t.test('unknown task 404, ids outside the vocabulary 400', async (t) => {
  t.equal((await post('/v1/tokenize', { model: 'nope', prompt: 'x' })).statusCode, 404);
  const bad = await post('/v1/detokenize', { tokens: [1, 99999] });
  t.equal(bad.statusCode, 400);
  t.match(bad.json().error.message, /99999/);
  t.equal((await post('/v1/detokenize', { tokens: [-1] })).statusCode, 400);
});

t.test("an empty prompt: tokenize counts what generate feeds (end-of-text, or nothing before a soft prompt), and generate serves it on every kind", async (t) => {
  for (const model of ['base', 'pos-bitfit', 'define-prefix', 'kjv-prompt', 'fortune-ptuning']) {
    const tokenized = (await post('/v1/tokenize', { model, prompt: '', raw: true })).json();
    const soft = model === 'kjv-prompt' || model === 'fortune-ptuning';
    t.same(tokenized.tokens, soft ? [] : [server.model.tokenizer.eosTokenId], `${model}: tokenize`);
    const res = await post(`/v1/tasks/${model}/generate`, { prompt: '', raw: true, max_tokens: 3, temperature: 0, ignore_eos: true });
    t.equal(res.statusCode, 200, `${model}: ${res.body.slice(0, 200)}`);
    t.equal(res.json().usage.prompt_tokens, tokenized.count, `${model}: generate's prompt_tokens equal tokenize's count`);
    t.equal(res.json().token_ids.length, 3);
  }
});
