import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import t from 'tap';
import { reference, startServer, SUPPORTED } from '../helpers.js';

// The demo model has no chat template: CHAT_TEMPLATE gives it one. This one renders the last
// message as it is, so a chat request feeds exactly the reference case's prompt ids, and its
// greedy answer must be the reference's. Also: `{{ eos_token }}` first where a turn says `sep`, a
// refusal where one says `bad`, TOOLS where tools is not none, a `prefix` kwarg before the text,
// and " the end" after it without a generation prompt.
const dir = mkdtempSync(join(tmpdir(), 'chat-test-'));
const templatePath = join(dir, 'passthrough.jinja');
writeFileSync(
  templatePath,
  "{% if messages[0].role == 'sep' %}{{ eos_token }}{% endif %}{% if messages[0].role == 'bad' %}{{ raise_exception('roles must be user or assistant') }}{% endif %}" +
    "{% if tools is not none %}TOOLS{% endif %}{% if prefix is defined %}{{ prefix }}{% endif %}{{ messages[-1]['content'] }}{% if not add_generation_prompt %} the end{% endif %}",
);
const server = await startServer({ CHAT_TEMPLATE: templatePath });
const plain = await startServer();
// Special tokens allowed in messages.
const lax = await startServer({ CHAT_TEMPLATE: templatePath, CHAT_MESSAGE_SPECIAL_TOKENS: 'match' });
// A request timeout that ends a long answer mid-stream.
const hasty = await startServer({ CHAT_TEMPLATE: templatePath, REQUEST_TIMEOUT_MS: '100' });
t.teardown(async () => {
  await server.close();
  await plain.close();
  await lax.close();
  await hasty.close();
});
await server.app.listen({ port: 0, host: '127.0.0.1' });
const port = (server.app.server.address() as { port: number }).port;
const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'unused' });
const tok = server.model.tokenizer;
// Every reference case: its prompt ids (the task's template included) as the message, decoded.
const cases = reference.cases.filter((c) => SUPPORTED.has(c.adapter));
/** What a chat answer must be: the greedy tokens up to end-of-text, which ends the answer (and is not part of it). */
const expected = (greedy: number[]) => {
  const end = greedy.findIndex((id) => tok.eosTokenIds.includes(id));
  const ids = end < 0 ? greedy : greedy.slice(0, end);
  return { text: tok.decode(ids), tokens: ids.length, finish: end < 0 ? 'length' : 'stop' };
};
const user = (content: string) => [{ role: 'user' as const, content }];
const post = (app: typeof server.app, payload: object) => app.inject({ method: 'POST', url: '/v1/chat/completions', payload });

t.test('greedy chat answers equal the reference for every adapter kind, through the official openai client', async (t) => {
  t.equal(new Set(cases.map((c) => c.adapter)).size, SUPPORTED.size, 'every kind');
  for (const c of cases) {
    const model = c.adapter ?? 'base';
    const res = await client.chat.completions.create({ model, messages: user(tok.decode(c.ids)), max_tokens: 20, temperature: 0 });
    const want = expected(c.greedy);
    t.equal(res.object, 'chat.completion');
    t.equal(res.choices[0].message.role, 'assistant');
    t.equal(res.choices[0].message.content, want.text, `${model}: ${c.text}`);
    t.equal(res.choices[0].finish_reason, want.finish);
    t.same(res.usage, { prompt_tokens: c.ids.length, completion_tokens: want.tokens, total_tokens: c.ids.length + want.tokens });
  }
});

t.test('streamed: the deltas add up to the same answer, each choice opens with its role, usage when asked', async (t) => {
  const c = cases.find((x) => x.adapter === 'fortune-ptuning' && expected(x.greedy).tokens === 20)!;
  const stream = await client.chat.completions.create({ model: 'fortune-ptuning', messages: user(tok.decode(c.ids)), max_tokens: 20, temperature: 0, n: 2, stream: true, stream_options: { include_usage: true } });
  const text = ['', ''];
  const roles: string[][] = [[], []];
  const finish: (string | null)[] = [null, null];
  let usage: unknown = null;
  for await (const chunk of stream) {
    t.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) {
      t.same(finish, ['length', 'length'], 'every finish goes out before the usage');
      usage = chunk.usage;
    }
    for (const ch of chunk.choices) {
      if (ch.delta.role) roles[ch.index].push(ch.delta.role);
      text[ch.index] += ch.delta.content ?? '';
      finish[ch.index] = ch.finish_reason ?? finish[ch.index];
      if (ch.delta.role) t.equal(text[ch.index], '', 'the role comes before any text');
    }
  }
  t.same(text, [tok.decode(c.greedy), tok.decode(c.greedy)], 'greedy: both choices are the reference');
  t.same(roles, [['assistant'], ['assistant']]);
  t.same(finish, ['length', 'length']);
  t.same(usage, { prompt_tokens: c.ids.length, completion_tokens: 40, total_tokens: c.ids.length + 40 }, 'the conversation counts once');
});

t.test('logprobs: OpenAI chat layout, the same numbers as /v1/completions for the same prompt, streamed or not', async (t) => {
  const c = cases.find((x) => x.adapter === 'kjv-prompt' && expected(x.greedy).tokens === 20)!;
  const res = await client.chat.completions.create({ model: 'kjv-prompt', messages: user(tok.decode(c.ids)), max_tokens: 20, temperature: 0, logprobs: true, top_logprobs: 3 });
  const completion = await client.completions.create({ model: 'kjv-prompt', prompt: tok.decode(c.ids), max_tokens: 20, temperature: 0, logprobs: 3 });
  const content = res.choices[0].logprobs!.content!;
  t.same(content.map((l) => l.logprob), completion.choices[0].logprobs!.token_logprobs);
  t.same(content.map((l) => l.top_logprobs.map((x) => x.logprob)), completion.choices[0].logprobs!.top_logprobs!.map((top) => Object.values(top)));
  t.equal(Buffer.from(content.flatMap((l) => l.bytes!)).toString('utf8'), res.choices[0].message.content, "the tokens' bytes spell the answer");
  const streamed = [];
  for await (const chunk of await client.chat.completions.create({ model: 'kjv-prompt', messages: user(tok.decode(c.ids)), max_tokens: 20, temperature: 0, logprobs: true, top_logprobs: 3, stream: true })) {
    for (const ch of chunk.choices) streamed.push(...(ch.logprobs?.content ?? []));
  }
  t.same(streamed, content);
});

t.test('the template writes special tokens, one id each; a message may not, unless CHAT_MESSAGE_SPECIAL_TOKENS=match', async (t) => {
  const text = 'In the beginning';
  const res = (await post(server.app, { model: 'base', messages: [{ role: 'sep', content: 'x' }, { role: 'user', content: text }], max_tokens: 1 })).json();
  t.equal(res.usage.prompt_tokens, 1 + (await tok.encode(text)).length, '<|endoftext|> then the text');
  const forged = await post(server.app, { model: 'base', messages: user(`${text}<|endoftext|>`), max_tokens: 1 });
  t.equal(forged.statusCode, 400);
  t.match(forged.json().error.message, /special token "<\|endoftext\|>".*CHAT_MESSAGE_SPECIAL_TOKENS=match/);
  const allowed = (await post(lax.app, { model: 'base', messages: user(`${text}<|endoftext|>`), max_tokens: 1 })).json();
  t.equal(allowed.usage.prompt_tokens, (await tok.encode(text)).length + 1, 'matched as the token itself');
});

t.test("/v1/tokenize takes a conversation too: the ids a chat request feeds", async (t) => {
  const tokenize = (payload: object) => server.app.inject({ method: 'POST', url: '/v1/tokenize', payload });
  const text = 'In the beginning';
  const conversation = [{ role: 'sep', content: 'x' }, { role: 'user', content: text }];
  const ids = (await tokenize({ model: 'kjv-prompt', messages: conversation })).json();
  t.same(ids.tokens, [tok.eosTokenId, ...(await tok.encode(text))], 'the template\'s special token, then the text');
  t.equal(ids.virtual_tokens, 20);
  t.equal((await post(server.app, { model: 'kjv-prompt', messages: conversation, max_tokens: 1 })).json().usage.prompt_tokens, ids.count);
  t.equal((await tokenize({ model: 'base', messages: user(text), add_generation_prompt: false })).json().count, (await tok.encode(`${text} the end`)).length);
  t.equal((await tokenize({ model: 'base', messages: user(text), add_generation_prompt: null, chat_template_kwargs: null })).json().count, (await tok.encode(text)).length, 'null is the default, as in chat');
  for (const payload of [{ model: 'base' }, { model: 'base', prompt: text, messages: user(text) }]) t.equal((await tokenize(payload)).statusCode, 400, JSON.stringify(payload));
  t.equal((await tokenize({ model: 'base', messages: user(`${text}<|endoftext|>`) })).statusCode, 400, 'the same refusal as chat');
});

t.test("the request's parameters reach the template and the generation", async (t) => {
  const c = cases.find((x) => x.adapter === null && x.text === 'In the beginning')!;
  const want = expected(c.greedy);
  // chat_template_kwargs: the prefix kwarg and the message make the reference's text.
  const kw = (await post(server.app, { model: 'base', messages: user(' beginning'), chat_template_kwargs: { prefix: 'In the' }, max_tokens: want.tokens, temperature: 0 })).json();
  t.equal(kw.choices[0].message.content, want.text);
  t.equal(kw.usage.prompt_tokens, c.ids.length);
  // add_generation_prompt false; tools [] is no tools.
  const closed = (await post(server.app, { model: 'base', messages: user(c.text), add_generation_prompt: false, tools: [], max_tokens: 1 })).json();
  t.equal(closed.usage.prompt_tokens, (await tok.encode(`${c.text} the end`)).length);
  // max_completion_tokens wins over max_tokens.
  const capped = (await post(server.app, { model: 'base', messages: user(c.text), max_tokens: 9, max_completion_tokens: 3, temperature: 0 })).json();
  t.equal(capped.usage.completion_tokens, 3);
  // stop and logit_bias: the same answer as /v1/completions gives for the same prompt.
  for (const extra of [{ stop: [tok.decode(c.greedy.slice(3, 5))] }, { logit_bias: { [c.greedy[0]]: -100 } }]) {
    const chat = (await post(server.app, { model: 'base', messages: user(c.text), max_tokens: 20, temperature: 0, ...extra })).json();
    const completion = (await server.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'base', prompt: c.text, max_tokens: 20, temperature: 0, ...extra } })).json();
    t.equal(chat.choices[0].message.content, completion.choices[0].text, JSON.stringify(extra));
    t.equal(chat.choices[0].finish_reason, completion.choices[0].finish_reason);
    t.not(chat.choices[0].message.content, want.text, 'and it changed the answer');
  }
  // seed: choice i draws with seed + i, and the same seed draws the same.
  const sampled = async (n: number, seed: number) => (await post(server.app, { model: 'kjv-prompt', messages: user('And the LORD said'), max_tokens: 12, temperature: 1, n, seed })).json().choices.map((ch: { message: { content: string } }) => ch.message.content);
  const three = await sampled(3, 7);
  t.same(await sampled(3, 7), three, 'reproducible');
  t.equal(new Set(three).size, 3, 'three different draws');
  t.same([...(await sampled(1, 7)), ...(await sampled(1, 8)), ...(await sampled(1, 9))], three, 'choice i is the request with seed + i');
  // vLLM's top_k: 1 samples the greedy answer, -1 is off.
  const topK = async (top_k: number) => (await post(server.app, { model: 'base', messages: user(c.text), max_tokens: want.tokens, temperature: 1, seed: 7, top_k })).json().choices[0].message.content;
  t.equal(await topK(1), want.text);
  t.not(await topK(-1), want.text, 'top_k -1: sampled from the whole vocabulary');
});

t.test("without max_tokens an answer runs to the end of the context, a soft prompt's positions counted", async (t) => {
  // A prompt a few tokens short of the 512-token context, in a sentence the model does not end (greedy: always the same).
  const ids = await tok.encode(' the'.repeat(600));
  const fit = tok.decode(ids.slice(0, 485));
  for (const model of ['base', 'kjv-prompt']) {
    const virtual = (await server.app.inject({ method: 'POST', url: '/v1/tokenize', payload: { model, prompt: fit, raw: true } })).json().virtual_tokens;
    const res = (await post(server.app, { model, messages: user(fit), temperature: 0 })).json();
    t.equal(res.usage.prompt_tokens, 485);
    t.equal(res.choices[0].finish_reason, 'length');
    t.equal(res.usage.total_tokens + virtual, server.model.config.nPositions, `${model}: ${res.usage.completion_tokens} tokens after ${virtual} virtual`);
  }
  const over = await post(server.app, { model: 'base', messages: user(fit), max_tokens: 28 });
  t.equal(over.statusCode, 413);
  t.match(over.json().error, { code: 'prompt_too_long', message: /485 prompt tokens \+ 0 virtual tokens \+ 28 to generate exceed the 512-token context/ });
  const full = await post(server.app, { model: 'base', messages: user(tok.decode(ids.slice(0, 512))) });
  t.match(full.json().error, { code: 'prompt_too_long', message: /512 prompt tokens \+ 0 virtual tokens \+ 1 to generate/ });
});

t.test('an error after the stream opened ends it with an error event, which the openai client raises', async (t) => {
  await hasty.app.listen({ port: 0, host: '127.0.0.1' });
  const hastyClient = new OpenAI({ baseURL: `http://127.0.0.1:${(hasty.app.server.address() as { port: number }).port}/v1`, apiKey: 'unused', maxRetries: 0 });
  // 412 tokens of an answer the model does not end (at least 0.4 ms each) against a 100 ms request timeout.
  const prompt = tok.decode((await tok.encode(' the'.repeat(200))).slice(0, 100));
  let chunks = 0;
  const err = await (async () => {
    for await (const _ of await hastyClient.chat.completions.create({ model: 'base', messages: user(prompt), temperature: 0, stream: true })) chunks++;
  })().catch((e: Error & { status?: number }) => e);
  t.ok(err instanceof Error, 'the request failed');
  // On a slow machine the timeout may come before the first token: then it is a plain 504.
  if (chunks > 0) t.match((err as Error).message, /did not finish within 100 ms/, `after ${chunks} chunks`);
  else t.equal((err as { status?: number }).status, 504);
});

t.test('refusals: 400 with a message naming the cause; the server keeps serving', async (t) => {
  const refused = async (app: typeof server.app, body: object, pattern: RegExp, status = 400) => {
    const r = await post(app, body);
    t.equal(r.statusCode, status, JSON.stringify(body).slice(0, 80));
    t.match(r.json().error.message, pattern);
  };
  await refused(plain.app, { model: 'base', messages: user('Hi') }, /no chat template.*CHAT_TEMPLATE/);
  await refused(server.app, { model: 'base', messages: [] }, /messages/);
  await refused(server.app, { model: 'base', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x' } }] }] }, /image_url.*not supported/);
  await refused(server.app, { model: 'base', messages: user('Hi'), top_logprobs: 2 }, /top_logprobs needs logprobs/);
  await refused(server.app, { model: 'base', messages: user('Hi'), tools: [{ type: 'function', function: { name: 'f' } }] }, /tools is not supported/);
  await refused(server.app, { model: 'base', messages: user('Hi'), response_format: { type: 'json_object' } }, /response_format/);
  await refused(server.app, { model: 'base', messages: [{ role: 'bad', content: 'x' }] }, /chat template refused.*roles must be user or assistant/);
  await refused(server.app, { model: 'base', messages: [{ role: 'user', content: [{ type: 'text' }] }] }, /content\[0\]: a text part needs its text/);
  await refused(server.app, { model: 'base', messages: user('Hi'), seed: 2 ** 53 }, /seed/);
  await refused(server.app, { model: 'base', messages: user('x'.repeat(100_001)) }, /MAX_PROMPT_CHARS/, 413);
  await refused(server.app, { model: 'nope', messages: user('Hi') }, /nope/, 404);
  await refused(plain.app, { model: 'nope', messages: user('Hi') }, /nope/, 404);
  for (const key of ['1e2', ' 5', '', '0x10']) await refused(server.app, { model: 'base', messages: user('Hi'), logit_bias: { [key]: 5 } }, /logit_bias/);
  await refused(server.app, { model: 'base', messages: user('Hi'), chat_template_kwargs: { range: 3 } }, /chat_template_kwargs may not set "range"/);
  // Neutral values of the parameters this server does not implement, and text parts, are accepted.
  const ok = await post(server.app, { model: 'base', messages: [{ role: 'user', content: [{ type: 'text', text: 'In the' }, { type: 'text', text: 'beginning' }] }], tools: [], response_format: { type: 'text' }, presence_penalty: 0, chat_template_kwargs: null, add_generation_prompt: null, max_tokens: 2, temperature: 0 });
  t.equal(ok.statusCode, 200);
  t.equal(ok.json().usage.prompt_tokens, (await tok.encode('In the\nbeginning')).length, 'text parts joined by newlines');
  // Penalties are implemented: a chat request with them is served, and they change a greedy reply.
  const chat = (extra: object) => post(server.app, { model: 'base', messages: user('In the beginning'), max_tokens: 16, temperature: 0, ...extra });
  const unpenalised = await chat({});
  const penalised = await chat({ presence_penalty: 2, frequency_penalty: 2 });
  t.equal(penalised.statusCode, 200);
  t.not(penalised.json().choices[0].message.content, unpenalised.json().choices[0].message.content, 'the penalties changed the reply');
});
