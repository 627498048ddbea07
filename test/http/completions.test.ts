import OpenAI from 'openai';
import t from 'tap';
import { logSoftmax, reference, refLogits, startServer } from '../helpers.js';

const server = await startServer();
t.teardown(() => server.close());
await server.app.listen({ port: 0, host: '127.0.0.1' });
const port = (server.app.server.address() as { port: number }).port;
const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'unused' });
const tok = server.model.tokenizer;

t.test('the official openai client, non-streaming: greedy text equals the reference', async (t) => {
  const c = reference.cases.find((x) => x.adapter === 'kjv-prompt' && x.greedy.length === 20)!;
  const res = await client.completions.create({ model: 'kjv-prompt', prompt: c.text, max_tokens: 20, temperature: 0, logprobs: 2 });
  t.equal(res.object, 'text_completion');
  t.equal(res.model, 'kjv-prompt');
  t.equal(res.choices[0].text, tok.decode(c.greedy));
  t.equal(res.choices[0].finish_reason, 'length');
  t.equal(res.usage?.completion_tokens, 20);
  t.equal(res.choices[0].logprobs?.tokens?.length, 20);
  t.equal(Object.keys(res.choices[0].logprobs!.top_logprobs![0]).length, 2);
});

t.test('the official openai client, streaming: the same text, chunk by chunk', async (t) => {
  const c = reference.cases.find((x) => x.adapter === 'fortune-ptuning' && x.greedy.length === 20)!;
  const stream = await client.completions.create({ model: 'fortune-ptuning', prompt: c.text, max_tokens: 20, temperature: 0, stream: true });
  let text = '';
  let chunks = 0;
  let finish: string | null = null;
  for await (const chunk of stream) {
    for (const ch of chunk.choices) {
      text += ch.text;
      finish = ch.finish_reason ?? finish;
    }
    chunks++;
  }
  t.ok(chunks >= 20, `${chunks} chunks`);
  t.equal(text, tok.decode(c.greedy));
  t.equal(finish, 'length');
});

t.test('streamed with logprobs: each token\'s chunk carries its log-probabilities, and together they equal the non-streamed ones', async (t) => {
  const c = reference.cases.find((x) => x.adapter === 'kjv-prompt' && x.greedy.length === 20)!;
  const body = { model: 'kjv-prompt', prompt: c.text, max_tokens: 20, temperature: 0, logprobs: 2 } as const;
  const whole = (await client.completions.create(body)).choices[0].logprobs!;
  const streamed = { tokens: [] as string[], token_logprobs: [] as number[], top_logprobs: [] as Record<string, number>[], text_offset: [] as number[] };
  for await (const chunk of await client.completions.create({ ...body, stream: true })) {
    for (const ch of chunk.choices) {
      if (!ch.logprobs) continue;
      streamed.tokens.push(...ch.logprobs.tokens!);
      streamed.token_logprobs.push(...ch.logprobs.token_logprobs!);
      streamed.top_logprobs.push(...(ch.logprobs.top_logprobs as Record<string, number>[]));
      streamed.text_offset.push(...ch.logprobs.text_offset!);
    }
  }
  t.equal(streamed.tokens.length, 20);
  t.same(streamed, whole);
});

t.test('an array prompt gives one choice per prompt; unknown model is 404', async (t) => {
  const res = await client.completions.create({ model: 'base', prompt: ['love', 'In the beginning'], max_tokens: 3, temperature: 0 });
  t.same(res.choices.map((c) => c.index), [0, 1]);
  const err = await client.completions.create({ model: 'nope', prompt: 'x', max_tokens: 2 }).catch((e: { status?: number }) => e);
  t.equal((err as { status?: number }).status, 404);
});

async function sse(path: string, body: object): Promise<unknown[]> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (res.headers.get('content-type') !== 'text/event-stream') throw new Error(`not an event stream: ${res.status}`);
  const text = await res.text();
  return text.split('\n\n').filter(Boolean).map((e) => (e === 'data: [DONE]' ? '[DONE]' : JSON.parse(e.slice(6))));
}

t.test('streamed generate: tokens equal the non-streamed ones, text only in whole characters', async (t) => {
  for (const c of reference.cases.filter((x) => x.adapter === null || x.adapter === 'define-prefix')) {
    const body = { prompt: c.text, raw: true, max_tokens: 20, temperature: 0 };
    const plain = (await server.app.inject({ method: 'POST', url: `/v1/tasks/${c.adapter ?? 'base'}/generate`, payload: body })).json();
    const events = await sse(`/v1/tasks/${c.adapter ?? 'base'}/generate`, { ...body, stream: true });
    const tokens = events.filter((e): e is { token_id: number; text: string } => typeof e === 'object' && e !== null && 'token_id' in e);
    t.same(tokens.map((e) => e.token_id), plain.token_ids);
    t.equal(tokens.map((e) => e.text).join(''), plain.text);
    for (const e of tokens) t.notOk(e.text.includes('\uFFFD'), 'no broken character');
    t.same(events.at(-2), { finish_reason: plain.finish_reason, usage: plain.usage, task: plain.task, adapter_version: plain.adapter_version }, 'the last event names the version that served it');
    t.equal(events.at(-1), '[DONE]');
  }
  // A seeded sample through multi-byte text: the streamed pieces join to exactly the non-streamed text
  // (bytes of a character split across tokens are held until it completes; tokenizer tests check that).
  const body = { prompt: 'naïve café — 東京 🚀', raw: true, max_tokens: 30, temperature: 1, seed: 7 };
  const plain = (await server.app.inject({ method: 'POST', url: '/v1/tasks/base/generate', payload: body })).json();
  const events = (await sse('/v1/tasks/base/generate', { ...body, stream: true })) as { text?: string }[];
  t.equal(events.map((e) => (typeof e === 'object' && e.text) || '').join(''), plain.text);
});

t.test('streamed generate and ensembles with logprobs: each token event carries its logprob and top alternatives, equal to the non-streamed ones', async (t) => {
  for (const [path, extra] of [['/v1/tasks/kjv-prompt/generate', {}], ['/v1/ensembles/generate', { tasks: ['kjv-prompt', 'fortune-ptuning'] }]] as const) {
    const body = { prompt: 'And the LORD said', raw: true, max_tokens: 12, temperature: 0, logprobs: 3, ...extra };
    const plain = (await server.app.inject({ method: 'POST', url: path, payload: body })).json();
    t.equal(plain.logprobs.length, 12);
    const events = (await sse(path, { ...body, stream: true })) as { token_id?: number; logprob?: number; top?: unknown[] }[];
    const tokens = events.filter((e) => typeof e === 'object' && e.token_id !== undefined);
    t.same(tokens.map((e) => ({ token_id: e.token_id, logprob: e.logprob, top: e.top })), plain.logprobs, path);
    t.equal(tokens[0].top!.length, 3);
    const end = plain.adapter_versions ? { tasks: plain.tasks, adapter_versions: plain.adapter_versions } : { task: plain.task, adapter_version: plain.adapter_version };
    t.match(events.at(-2), { finish_reason: plain.finish_reason, usage: plain.usage, ...end });
  }
  const without = (await sse('/v1/tasks/base/generate', { prompt: 'x', max_tokens: 2, stream: true })) as object[];
  t.notOk(without.some((e) => typeof e === 'object' && ('logprob' in e || 'top' in e)), 'no logprobs unless asked');
});

t.test('a client that disconnects mid-stream cancels its row', async (t) => {
  const cancelled = server.engine.cancelled;
  const ctl = new AbortController();
  const res = await fetch(`http://127.0.0.1:${port}/v1/tasks/base/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'In the beginning', max_tokens: 450, temperature: 1, stream: true, ignore_eos: true }), signal: ctl.signal });
  const reader = res.body!.getReader();
  await reader.read();
  t.equal(server.engine.running, 1);
  ctl.abort();
  for (let i = 0; i < 400 && server.engine.cancelled === cancelled; i++) await new Promise((r) => setTimeout(r, 5));
  t.equal(server.engine.cancelled, cancelled + 1, 'the scheduler dropped it as cancelled');
  t.equal(server.engine.running, 0, 'the row was freed');
  // Counted once, as nginx counts a client that left: 499 client_closed.
  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  t.match(metrics, /sps_requests_total\{task="base",route="\/v1\/tasks\/:task\/generate",status="499"\} 1\n/);
  t.match(metrics, /sps_errors_total\{task="base",code="client_closed"\} 1\n/);
});

/** Counts the prompts that join a batch from now on (a step that only drops a row admits none). */
function admissionCounter(): { admitted: number } {
  const c = { admitted: 0 };
  const prev = server.engine.onStep;
  server.engine.onStep = (s) => {
    c.admitted += s.plan.prefill.length;
    prev?.(s);
  };
  return c;
}

t.test('finding 1: a prompt array with one refused prompt is refused whole, streamed or not, and nothing runs', async (t) => {
  const counter = admissionCounter();
  for (const stream of [true, false]) {
    const res = await fetch(`http://127.0.0.1:${port}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'base', prompt: ['hello', 'a '.repeat(600)], max_tokens: 8, stream }),
    });
    t.equal(res.status, 413, `stream: ${stream}`);
    t.equal(res.headers.get('content-type')?.startsWith('application/json'), true, 'an HTTP error, not an event stream');
    t.equal(((await res.json()) as { error: { code: string } }).error.code, 'prompt_too_long');
  }
  await new Promise((r) => setTimeout(r, 50));
  t.equal(counter.admitted, 0, 'no prompt of a refused request ran');
  t.equal(server.engine.queueDepth, 0);
  const after = await client.completions.create({ model: 'base', prompt: ['hello', 'world'], max_tokens: 2, temperature: 0, stream: false });
  t.equal(after.choices.length, 2, 'the server keeps serving');
});

t.test('finding 13: a 64-prompt array streams without a MaxListenersExceededWarning', async (t) => {
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.name);
  process.on('warning', onWarning);
  t.teardown(() => process.off('warning', onWarning));
  const events = await sse('/v1/completions', { model: 'base', prompt: Array.from({ length: 64 }, (_, i) => `p${i}`), max_tokens: 2, temperature: 0, stream: true });
  t.equal(events.at(-1), '[DONE]');
  const finishes = events.filter((e) => typeof e === 'object' && (e as { choices: { finish_reason: string | null }[] }).choices?.[0]?.finish_reason);
  t.equal(finishes.length, 64);
  await new Promise((r) => setImmediate(r));
  t.notOk(warnings.includes('MaxListenersExceededWarning'));
});

t.test('n: one choice per completion, each with its own seed (seed + j), in the same request', async (t) => {
  const res = await client.completions.create({ model: 'kjv-prompt', prompt: ['And the LORD said', 'In the beginning'], max_tokens: 8, temperature: 1, seed: 7, n: 3 });
  t.same(res.choices.map((c) => c.index), [0, 1, 2, 3, 4, 5]);
  for (const [i, prompt] of ['And the LORD said', 'In the beginning'].entries()) {
    for (let j = 0; j < 3; j++) {
      const alone = await client.completions.create({ model: 'kjv-prompt', prompt, max_tokens: 8, temperature: 1, seed: 7 + j });
      t.equal(res.choices[i * 3 + j].text, alone.choices[0].text, `prompt ${i} completion ${j} equals seed ${7 + j} alone`);
    }
  }
  const single = await client.completions.create({ model: 'kjv-prompt', prompt: 'And the LORD said', max_tokens: 8, temperature: 1, seed: 7 });
  t.equal(res.usage?.prompt_tokens, single.usage!.prompt_tokens + (await client.completions.create({ model: 'kjv-prompt', prompt: 'In the beginning', max_tokens: 1 })).usage!.prompt_tokens, 'a prompt counts once');
  const tooMany = await client.completions.create({ model: 'base', prompt: Array(5).fill('x'), n: 16, max_tokens: 1 }).catch((e: { status?: number }) => e);
  t.equal((tooMany as { status?: number }).status, 400);
});

t.test('logit_bias steers greedy decoding; ids outside the vocabulary are 400', async (t) => {
  // A case whose runner-up is a real token (end-of-text would end the completion with no text).
  const c = reference.cases.find((x) => x.adapter === null && x.greedy.length === 20 && x.top5[1] !== 0)!;
  const plain = await client.completions.create({ model: 'base', prompt: c.text, max_tokens: 1, temperature: 0, logprobs: 0 });
  t.equal(plain.choices[0].text, tok.decode([c.greedy[0]]));
  const banned = await client.completions.create({ model: 'base', prompt: c.text, max_tokens: 1, temperature: 0, logit_bias: { [String(c.greedy[0])]: -100 } });
  t.equal(banned.choices[0].text, tok.decode([c.top5[1]]), 'the runner-up wins when the greedy token is banned');
  const forced = await client.completions.create({ model: 'base', prompt: c.text, max_tokens: 1, temperature: 0, logit_bias: { '42': 100 } });
  t.equal(forced.choices[0].text, tok.decode([42]));
  const bad = await client.completions.create({ model: 'base', prompt: c.text, max_tokens: 1, logit_bias: { '999999': 5 } }).catch((e: { status?: number; message?: string }) => e);
  t.equal((bad as { status?: number }).status, 400);
  t.match((bad as { message?: string }).message, /999999/);
});

t.test('logprobs: 0 reports the chosen tokens’ log-probabilities and no alternatives', async (t) => {
  const c = reference.cases.find((x) => x.adapter === null && x.greedy.length === 20)!;
  const res = await client.completions.create({ model: 'base', prompt: c.text, max_tokens: 1, temperature: 0, logprobs: 0 });
  const lp = res.choices[0].logprobs!;
  t.equal(lp.token_logprobs!.length, 1);
  const want = logSoftmax(refLogits(c))[c.greedy[0]];
  t.ok(Math.abs(lp.token_logprobs![0] - want) <= 1e-4, `${lp.token_logprobs![0]} vs ${want}`);
  t.same(lp.top_logprobs, [{}]);
  const none = await client.completions.create({ model: 'base', prompt: c.text, max_tokens: 1, temperature: 0 });
  t.equal(none.choices[0].logprobs, null);
});

t.test('logprobs name a token that is not whole characters by its bytes, as OpenAI does; text_offset stays within the text', async (t) => {
  // Byte tokens of the demo tokenizer (byte-level BPE), each part of a UTF-8 character: all read U+FFFD on their own.
  const res = await client.completions.create({ model: 'base', prompt: 'x', max_tokens: 4, temperature: 0, logprobs: 3, logit_bias: { 161: 50, 164: 50, 245: 50 } });
  const choice = res.choices[0];
  const lp = choice.logprobs!;
  // Their vocabulary entries 'ä', 'ç' and 'ĸ' (U+0138) are bytes 0xe4, 0xe7 and 0x96 in GPT-2's byte-to-character table.
  t.same(Object.keys(lp.top_logprobs![0]).sort(), ['bytes:\\x96', 'bytes:\\xe4', 'bytes:\\xe7']);
  t.match(lp.tokens![0], /^bytes:\\x[0-9a-f]{2}$/);
  t.equal(lp.top_logprobs![0][lp.tokens![0]], lp.token_logprobs![0], 'the chosen token is among the alternatives, with its own log-probability');
  t.ok(lp.text_offset!.every((o, i) => o <= choice.text.length && (i === 0 || o >= lp.text_offset![i - 1])), `offsets ${lp.text_offset} within ${JSON.stringify(choice.text)}`);
});

t.test('echo puts the prompt before the completion, streamed or not', async (t) => {
  const res = await client.completions.create({ model: 'base', prompt: 'In the beginning', max_tokens: 4, temperature: 0, echo: true });
  const plain = await client.completions.create({ model: 'base', prompt: 'In the beginning', max_tokens: 4, temperature: 0 });
  t.equal(res.choices[0].text, 'In the beginning' + plain.choices[0].text);
  const stream = await client.completions.create({ model: 'base', prompt: 'In the beginning', max_tokens: 4, temperature: 0, echo: true, stream: true });
  let text = '';
  for await (const chunk of stream) for (const ch of chunk.choices) text += ch.text;
  t.equal(text, res.choices[0].text);
  const both = await client.completions.create({ model: 'base', prompt: 'x', max_tokens: 1, echo: true, logprobs: 1 }).catch((e: { status?: number }) => e);
  t.equal((both as { status?: number }).status, 400);
});

t.test('parameters that would change the output and are not supported are 400, naming them', async (t) => {
  for (const [name, value] of [['best_of', 2], ['suffix', 'end']] as const) {
    const err = await client.completions.create({ model: 'base', prompt: 'x', max_tokens: 1, [name]: value }).catch((e: { status?: number; message?: string }) => e);
    t.equal((err as { status?: number }).status, 400, name);
    t.match((err as { message?: string }).message, name);
  }
  const neutral = await client.completions.create({ model: 'base', prompt: 'x', max_tokens: 1, presence_penalty: 0, frequency_penalty: 0, best_of: 1 });
  t.equal(neutral.choices.length, 1, 'neutral values are accepted');
  // vLLM's sampling extensions that this server does not implement, sent as the openai client's extra body.
  for (const [name, value] of [['min_p', 0.1], ['repetition_penalty', 1.2], ['min_tokens', 4], ['use_beam_search', true]] as const) {
    for (const url of ['/v1/completions', '/v1/chat/completions']) {
      const body = url === '/v1/completions' ? { model: 'base', prompt: 'x', max_tokens: 1 } : { model: 'base', messages: [{ role: 'user', content: 'x' }], max_tokens: 1 };
      const refused = await server.app.inject({ method: 'POST', url, payload: { ...body, [name]: value } });
      t.equal(refused.statusCode, 400, `${url} ${name}`);
      t.match(refused.json().error.message, name);
    }
  }
  const vllmNeutral = await server.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'base', prompt: 'x', max_tokens: 1, min_p: 0, repetition_penalty: 1, min_tokens: 0, use_beam_search: false } });
  t.equal(vllmNeutral.statusCode, 200, "vLLM's neutral values are accepted");
});

t.test('null is every optional field\'s default, as OpenAI takes it', async (t) => {
  const nulls = { max_tokens: null, top_p: null, top_k: null, stop: null, seed: null, logprobs: null, stream: null, n: null, echo: null, logit_bias: null, presence_penalty: null, frequency_penalty: null };
  const withNulls = await server.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'kjv-prompt', prompt: 'And the LORD said', temperature: 0, ...nulls } });
  t.equal(withNulls.statusCode, 200, withNulls.body);
  const without = await client.completions.create({ model: 'kjv-prompt', prompt: 'And the LORD said', temperature: 0 });
  t.equal(withNulls.json().choices[0].text, without.choices[0].text);
  t.equal(withNulls.json().usage.completion_tokens, 16, 'max_tokens null: the default 16');
  t.equal(withNulls.json().choices.length, 1);
  t.equal(withNulls.json().choices[0].logprobs, null);
  const sampled = await server.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'base', prompt: 'x', max_tokens: 2, temperature: null } });
  t.equal(sampled.statusCode, 200);
});

t.test("vLLM's top_k on /v1/completions: top_k 1 samples the greedy tokens; -1 and 0 are off (chat.test.ts: chat's)", async (t) => {
  const c = reference.cases.find((x) => x.adapter === 'kjv-prompt' && x.greedy.length === 20)!;
  const greedy = tok.decode(c.greedy);
  const one = await server.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'kjv-prompt', prompt: c.text, max_tokens: 20, temperature: 1, seed: 3, top_k: 1 } });
  t.equal(one.json().choices[0].text, greedy);
  const sampled = (top_k?: number) => client.completions.create({ model: 'kjv-prompt', prompt: c.text, max_tokens: 20, temperature: 1, seed: 3, ...(top_k !== undefined && { top_k }) } as OpenAI.CompletionCreateParamsNonStreaming);
  const off = (await sampled()).choices[0].text;
  t.not(off, greedy, 'temperature 1 without top_k samples other tokens');
  t.equal((await sampled(-1)).choices[0].text, off);
  t.equal((await sampled(0)).choices[0].text, off);
  t.equal((await server.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'base', prompt: 'x', top_k: 1001 } })).statusCode, 400);
});

t.test('presence and frequency penalties through the official client: the tokens the native route gives with them (the reference test checks those); out of -2..2 is 400', async (t) => {
  const c = reference.cases.find((x) => x.adapter === 'kjv-prompt' && x.greedy.length === 20)!;
  const penalties = { presence_penalty: 2, frequency_penalty: 2 };
  const res = await client.completions.create({ model: 'kjv-prompt', prompt: c.text, max_tokens: 20, temperature: 0, ...penalties });
  const native = await server.app.inject({ method: 'POST', url: '/v1/tasks/kjv-prompt/generate', payload: { prompt: c.text, raw: true, max_tokens: 20, temperature: 0, ...penalties } });
  t.equal(res.choices[0].text, native.json().text);
  t.not(res.choices[0].text, tok.decode(c.greedy), 'they changed the greedy text');
  for (const bad of [{ presence_penalty: 2.5 }, { frequency_penalty: -3 }]) {
    const err = await client.completions.create({ model: 'base', prompt: 'x', max_tokens: 1, ...bad }).catch((e: { status?: number }) => e);
    t.equal((err as { status?: number }).status, 400, JSON.stringify(bad));
  }
});
