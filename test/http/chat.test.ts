import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import t from 'tap';
import { reference, startServer, SUPPORTED } from '../helpers.js';

// The demo model has no chat template: CHAT_TEMPLATE gives it one. This one renders the last
// message as it is, so a chat request feeds exactly the reference case's prompt ids, and its
// greedy answer must be the reference's; `{{ eos_token }}` first where a turn says `sep`.
const dir = mkdtempSync(join(tmpdir(), 'chat-test-'));
const templatePath = join(dir, 'passthrough.jinja');
writeFileSync(templatePath, "{% if messages[0].role == 'sep' %}{{ eos_token }}{% endif %}{% if messages[0].role == 'bad' %}{{ raise_exception('roles must be user or assistant') }}{% endif %}{{ messages[-1]['content'] }}");
const server = await startServer({ CHAT_TEMPLATE: templatePath });
const plain = await startServer();
t.teardown(async () => {
  await server.close();
  await plain.close();
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
    if (chunk.usage) usage = chunk.usage;
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

t.test('the template writes special tokens: matched as one id each, where user text would not be', async (t) => {
  const text = 'In the beginning';
  const res = (await post(server.app, { model: 'base', messages: [{ role: 'sep', content: 'x' }, { role: 'user', content: text }], max_tokens: 1 })).json();
  t.equal(res.usage.prompt_tokens, 1 + (await tok.encode(text)).length, '<|endoftext|> then the text');
});

t.test('without max_tokens an answer may run to the end of the context', async (t) => {
  // A prompt a few tokens short of the 512-token context, in a sentence the model will not end.
  const long = Array.from({ length: 600 }, () => ' the').join('');
  const ids = await tok.encode(long);
  const fit = tok.decode(ids.slice(0, 505));
  const res = (await post(server.app, { model: 'base', messages: user(fit), temperature: 0 })).json();
  t.equal(res.usage.prompt_tokens, 505);
  t.ok(res.usage.completion_tokens <= 7, `${res.usage.completion_tokens} tokens`);
  if (res.choices[0].finish_reason === 'length') t.equal(res.usage.total_tokens, server.model.config.nPositions);
  const over = await post(server.app, { model: 'base', messages: user(fit), max_tokens: 8 });
  t.equal(over.statusCode, 413);
  t.equal(over.json().error.code, 'prompt_too_long');
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
  await refused(server.app, { model: 'nope', messages: user('Hi') }, /nope/, 404);
  // Neutral values of the parameters this server does not implement, and text parts, are accepted.
  const ok = await post(server.app, { model: 'base', messages: [{ role: 'user', content: [{ type: 'text', text: 'In the' }, { type: 'text', text: 'beginning' }] }], tools: [], response_format: { type: 'text' }, presence_penalty: 0, max_tokens: 2, temperature: 0 });
  t.equal(ok.statusCode, 200);
  t.equal(ok.json().usage.prompt_tokens, (await tok.encode('In the\nbeginning')).length, 'text parts joined by newlines');
});
