import { join } from 'node:path';
import t from 'tap';
import { adapterParser } from '../../src/adapters/format.js';
import { readAdapterFolder } from '../../src/adapters/fs-store.js';
import { FeedContext } from '../../src/executor/model-constants.js';
import { virtualTokens } from '../../src/executor/prefill.js';
import { openSessions } from '../../src/executor/sessions.js';
import { logSoftmax, prefillLogits, reference, refLogits, ROOT, startServer, SUPPORTED, type RefCase } from '../helpers.js';

const server = await startServer();
t.teardown(() => server.close());
const cases = reference.cases.filter((c) => SUPPORTED.has(c.adapter));

async function generate(c: RefCase) {
  const res = await server.app.inject({
    method: 'POST',
    url: `/v1/tasks/${c.adapter ?? 'base'}/generate`,
    payload: { prompt: c.text, raw: true, max_tokens: 20, temperature: 0, logprobs: 5 },
  });
  return { status: res.statusCode, body: res.json() };
}

function check(t: { equal: Function; same: Function; ok: Function }, c: RefCase, status: number, body: any): void {
  const name = `${c.adapter ?? 'base'} ${JSON.stringify(c.text)}`;
  t.equal(status, 200, name);
  const ended = c.greedy.at(-1) === 0;
  t.same(body.token_ids, ended ? c.greedy.slice(0, -1) : c.greedy, `${name}: greedy tokens`);
  t.equal(body.finish_reason, ended ? 'stop' : 'length', `${name}: finish_reason`);
  t.equal(body.usage.prompt_tokens, c.ids.length);
  const expected = logSoftmax(refLogits(c));
  if (body.logprobs.length === 0) return; // end-of-text came first: checked through /score below
  const top = body.logprobs[0].top as { token_id: number; logprob: number }[];
  t.same(top.map((x) => x.token_id), c.top5, `${name}: top-5 ids`);
  for (const x of top) t.ok(Math.abs(x.logprob - expected[x.token_id]) <= 1e-4 * Math.max(1, Math.abs(expected[x.token_id])), `${name}: logprob of ${x.token_id}`);
}

t.test('every supported case, one request at a time', async (t) => {
  for (const c of cases) {
    const { status, body } = await generate(c);
    check(t, c, status, body);
  }
});

t.test('every supported case at once, twice over: mixed tasks share batches', async (t) => {
  const twice = [...cases, ...cases];
  const results = await Promise.all(twice.map(generate));
  twice.forEach((c, i) => check(t, c, results[i].status, results[i].body));
});

t.test('score: log-probability of end-of-text at the last position equals the reference', async (t) => {
  for (const c of cases) {
    const res = await server.app.inject({ method: 'POST', url: `/v1/tasks/${c.adapter ?? 'base'}/score`, payload: { prompt: c.text, completion: '', raw: true, eos: true } });
    const want = logSoftmax(refLogits(c))[0];
    t.ok(Math.abs(res.json().logprob - want) <= 1e-4 * Math.max(1, Math.abs(want)), `${c.adapter ?? 'base'} ${JSON.stringify(c.text)}`);
    t.equal(res.json().tokens, 1);
  }
});

// Classify on every case's own text: with one-token labels the scores are the log-softmax of the
// reference's last-position logits, so every adapter kind is checked, not only the pos-* ones.
t.test('classify with one-token labels equals the log-softmax of the reference logits', async (t) => {
  const tok = server.model.tokenizer;
  const firstTokens = [...new Set(reference.labels.map((w) => tok.encodeSync(' ' + w)[0]))];
  const labels = firstTokens.map((id) => tok.decode([id]).slice(1));
  t.same(labels.map((w) => tok.encodeSync(' ' + w)), firstTokens.map((id) => [id]), 'each label is one token');
  for (const c of reference.cases.filter((x) => SUPPORTED.has(x.adapter))) {
    const res = await server.app.inject({ method: 'POST', url: `/v1/tasks/${c.adapter ?? 'base'}/classify`, payload: { input: c.text, prompt_template: '{text}', labels } });
    const expected = logSoftmax(refLogits(c));
    const scores = res.json().results[0].scores as Record<string, number>;
    labels.forEach((w, i) => t.ok(Math.abs(scores[w] - expected[firstTokens[i]]) <= 1e-4 * Math.max(1, Math.abs(expected[firstTokens[i]])), `${c.adapter ?? 'base'} ${c.text} '${w}'`));
  }
});

t.test('classify scores equal the reference label_logprobs', async (t) => {
  for (const c of reference.cases.filter((x) => x.label_logprobs && SUPPORTED.has(x.adapter))) {
    const prompt = c.text.endsWith('->') ? c.text : `${c.text} ->`;
    const res = await server.app.inject({
      method: 'POST',
      url: `/v1/tasks/${c.adapter ?? 'base'}/classify`,
      payload: { input: [prompt], prompt_template: '{text}', labels: reference.labels },
    });
    t.equal(res.statusCode, 200);
    const scores = res.json().results[0].scores as Record<string, number>;
    for (const [label, want] of Object.entries(c.label_logprobs!)) {
      t.ok(Math.abs(scores[label] - want) <= 1e-3, `${c.adapter ?? 'base'} ${c.text} ${label}: ${scores[label]} vs ${want}`);
    }
  }
});

t.test('a temperature too small for float32 (below 1e-6) samples greedily: the reference tokens, not an empty completion', async (t) => {
  for (const c of cases.filter((x) => x.greedy[0] !== 0).slice(0, 4)) {
    for (const temperature of [1e-40, 1e-7]) {
      const res = await server.app.inject({ method: 'POST', url: `/v1/tasks/${c.adapter ?? 'base'}/generate`, payload: { prompt: c.text, raw: true, max_tokens: 20, temperature, seed: 1 } });
      t.equal(res.statusCode, 200);
      const ended = c.greedy.at(-1) === 0;
      t.same(res.json().token_ids, ended ? c.greedy.slice(0, -1) : c.greedy, `${c.adapter ?? 'base'} at temperature ${temperature}`);
    }
  }
});

t.test('presence and frequency penalties: each greedy token is the argmax of the reference logits less the penalties of the tokens generated before it', async (t) => {
  const sessions = await openSessions(server.model);
  const ctx = new FeedContext(server.model.tensors);
  const parse = adapterParser(server.model);
  let changed = 0;
  let repeats = 0;
  // Penalising repeats, then (a negative frequency penalty) favouring them, so that counts above 1 are tested too.
  const settings = [{ presence: 0.5, frequency: 1.5 }, { presence: 0, frequency: -1 }];
  for (const [penalties, name] of settings.flatMap((p) => [null, 'kjv-prompt', 'pos-lora'].map((n) => [p, n] as const))) {
    const c = cases.filter((x) => x.adapter === name).sort((a, b) => b.greedy.length - a.greedy.length)[0];
    const adapter = name ? parse(name, readAdapterFolder(join(ROOT, 'adapters', name))).tensors : null;
    const res = await server.app.inject({
      method: 'POST',
      url: `/v1/tasks/${name ?? 'base'}/generate`,
      payload: { prompt: c.text, raw: true, max_tokens: 12, temperature: 0, logprobs: 1, presence_penalty: penalties.presence, frequency_penalty: penalties.frequency, ignore_eos: true },
    });
    t.equal(res.statusCode, 200, res.body);
    const { token_ids: ids, logprobs } = res.json() as { token_ids: number[]; logprobs: { logprob: number }[] };
    if (ids.join() !== c.greedy.slice(0, ids.length).join()) changed++;
    const counts = new Map<number, number>();
    for (let i = 0; i < ids.length; i++) {
      const tokens = [...c.ids, ...ids.slice(0, i)];
      const [logits] = (await prefillLogits(sessions, ctx, [{ adapter, tokens, logitAt: [virtualTokens(adapter, 'prompt') + tokens.length - 1] }])).rows;
      for (const [id, n] of counts) logits[id] -= penalties.frequency * n + penalties.presence;
      let best = 0;
      for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
      t.equal(ids[i], best, `${name ?? 'base'} step ${i}`);
      const lp = logSoftmax(logits)[ids[i]];
      t.ok(Math.abs(logprobs[i].logprob - lp) <= 1e-4 * Math.max(1, Math.abs(lp)), `${name ?? 'base'} step ${i}: its logprob is after the penalties (${logprobs[i].logprob} against ${lp})`);
      if (counts.has(ids[i])) repeats++;
      counts.set(ids[i], (counts.get(ids[i]) ?? 0) + 1);
    }
  }
  t.ok(changed > 0, `the penalties changed ${changed} of 6 greedy paths`);
  t.ok(repeats > 0, `${repeats} tokens repeated one generated before`);
});
