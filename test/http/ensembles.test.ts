import t from 'tap';
import { adapterFiles, adaptersCopy, multipart, reference, refLogits, startServer } from '../helpers.js';

const server = await startServer({ ADAPTERS_DIR: adaptersCopy(['pos-prefix', 'pos-bitfit', 'pos-prompt', 'pos-ptuning', 'kjv-prompt']), ADMIN_TOKEN: 'secret-admin' });
t.teardown(() => server.close());
const post = (url: string, payload: object) => server.app.inject({ method: 'POST', url, payload });
const LABELS = ['noun', 'verb', 'adjective', 'adverb'];
const WORDS = ['happily', 'ocean', 'run', 'blue', 'quickly', 'table'];

function softmax(scores: Record<string, number>): Record<string, number> {
  const max = Math.max(...Object.values(scores));
  const sum = LABELS.reduce((s, w) => s + Math.exp(scores[w] - max), 0);
  return Object.fromEntries(LABELS.map((w) => [w, Math.exp(scores[w] - max) / sum]));
}

async function single(task: string): Promise<Record<string, number>[]> {
  const res = await post(`/v1/tasks/${task}/classify`, { input: WORDS });
  return (res.json().results as { scores: Record<string, number> }[]).map((r) => softmax(r.scores));
}

t.test('ensemble classify is the weighted mean of the members’ own classify results', async (t) => {
  const tasks = ['pos-prefix', 'pos-bitfit', 'pos-prompt', 'pos-ptuning'];
  const own = await Promise.all(tasks.map(single));
  for (const weights of [undefined, [1, 2, 3, 4]]) {
    const res = await post('/v1/ensembles/classify', { tasks, input: WORDS, weights });
    t.equal(res.statusCode, 200);
    const body = res.json();
    t.same(body.tasks, tasks);
    t.equal(body.adapter_versions.length, 4);
    const w = weights ? weights.map((x) => x / 10) : [0.25, 0.25, 0.25, 0.25];
    body.results.forEach((r: { label: string; probabilities: Record<string, number>; members: { task: string; probabilities: Record<string, number> }[] }, i: number) => {
      r.members.forEach((m, k) => {
        t.equal(m.task, tasks[k]);
        for (const l of LABELS) t.ok(Math.abs(m.probabilities[l] - own[k][i][l]) <= 1e-6, `${m.task} ${WORDS[i]} ${l}`);
      });
      const mean = Object.fromEntries(LABELS.map((l) => [l, own.reduce((s, o, k) => s + w[k] * o[i][l], 0)]));
      for (const l of LABELS) t.ok(Math.abs(r.probabilities[l] - mean[l]) <= 1e-6, `ensemble ${WORDS[i]} ${l}`);
      t.equal(r.label, LABELS.reduce((a, b) => (mean[b] > mean[a] ? b : a)));
    });
  }
});

t.test('an unknown member is 404 naming it; members without labels need labels; bad weights are 400', async (t) => {
  const missing = await post('/v1/ensembles/classify', { tasks: ['pos-prefix', 'no-such-task'], input: 'ocean' });
  t.equal(missing.statusCode, 404);
  t.match(missing.json().error.message, /no-such-task/);
  const generation = await post('/v1/ensembles/classify', { tasks: ['pos-prefix', 'kjv-prompt'], input: 'ocean' });
  t.equal(generation.statusCode, 400);
  t.equal(generation.json().error.code, 'not_a_classification_task');
  t.match(generation.json().error.message, /kjv-prompt/);
  const labelled = await post('/v1/ensembles/classify', { tasks: ['pos-prefix', 'kjv-prompt'], input: 'ocean', labels: ['noun', 'verb'] });
  t.equal(labelled.statusCode, 200);
  t.equal((await post('/v1/ensembles/classify', { tasks: ['pos-prefix', 'pos-bitfit'], input: 'ocean', weights: [1] })).statusCode, 400);
  t.equal((await post('/v1/ensembles/classify', { tasks: ['pos-prefix', 'pos-bitfit'], input: 'ocean', weights: [0, 0] })).statusCode, 400);
  t.equal((await post('/v1/ensembles/classify', { tasks: ['pos-prefix'], input: 'ocean' })).statusCode, 400, 'one member is no ensemble');
  t.equal((await post('/v1/ensembles/classify', { tasks: ['pos-prefix', 'pos-prefix'], input: 'ocean' })).statusCode, 400, 'duplicate members');
});

t.test('a member replaced while the request runs: the request stays on one version of it', async (t) => {
  const before = await single('pos-bitfit');
  const words = Array.from({ length: 64 }, (_, i) => WORDS[i % WORDS.length]);
  const pending = post('/v1/ensembles/classify', { tasks: ['pos-prefix', 'pos-bitfit'], input: words });
  const { payload, headers } = multipart(adapterFiles('pos-ptuning'));
  const swap = await server.app.inject({ method: 'PUT', url: '/v1/adapters/pos-bitfit', payload, headers: { ...headers, authorization: 'Bearer secret-admin' } });
  t.equal(swap.statusCode, 200);
  const after = await single('pos-bitfit');
  const body = (await pending).json();
  const expected = body.adapter_versions[1] === swap.json().version ? after : before;
  // The 64 rows share packed prefill runs unlike the single requests' rows: float32 rounding (1.2e-6
  // seen), where the other version would differ by far more.
  body.results.forEach((r: { members: { probabilities: Record<string, number> }[] }, i: number) => {
    for (const l of LABELS) t.ok(Math.abs(r.members[1].probabilities[l] - expected[i % WORDS.length][l]) <= 1e-5, `row ${i} ${l}: ${Math.abs(r.members[1].probabilities[l] - expected[i % WORDS.length][l]).toExponential(2)}`);
  });
});

/** The weighted mean of softmax distributions, in float64. */
function mixture(logits: Float32Array[], weights: number[]): Float64Array {
  const out = new Float64Array(logits[0].length);
  logits.forEach((l, k) => {
    let max = -Infinity;
    for (const v of l) max = Math.max(max, v);
    let sum = 0;
    for (const v of l) sum += Math.exp(v - max);
    for (let i = 0; i < l.length; i++) out[i] += weights[k] * (Math.exp(l[i] - max) / sum);
  });
  return out;
}

t.test('ensemble generate: the first token is the argmax of the weighted mean of the members’ reference distributions', async (t) => {
  // (pos-bitfit was replaced by an earlier test: its reference no longer applies.)
  const tasks = ['kjv-prompt', 'pos-prefix', 'pos-prompt', 'base'];
  const weights = [1, 2, 3, 4];
  const texts = [...new Set(reference.cases.map((c) => c.text))];
  for (const text of texts) {
    const logits = tasks.map((task) => refLogits(reference.cases.find((c) => c.text === text && c.adapter === (task === 'base' ? null : task))!));
    const p = mixture(logits, weights.map((w) => w / 10));
    const order = [...p.keys()].sort((a, b) => p[b] - p[a]);
    if (p[order[0]] - p[order[1]] < 1e-5) continue; // a near tie could go either way in float32
    const res = await post('/v1/ensembles/generate', { tasks, weights, prompt: text, raw: true, max_tokens: 1, temperature: 0, logprobs: 1, ignore_eos: true });
    t.equal(res.statusCode, 200);
    const body = res.json();
    t.equal(body.token_ids[0], order[0], JSON.stringify(text));
    t.ok(Math.abs(body.logprobs[0].logprob - Math.log(p[order[0]])) <= 1e-4, `logprob ${body.logprobs[0].logprob} vs ${Math.log(p[order[0]])}`);
    t.same(body.tasks, tasks);
    t.equal(body.adapter_versions.length, 4);
  }
});

t.test('ensemble generate gives the same tokens alone and amid other traffic, greedy and seeded', async (t) => {
  const tasks = ['kjv-prompt', 'pos-ptuning', 'base'];
  for (const sampling of [{ temperature: 0 }, { temperature: 1, top_p: 0.9, seed: 11 }]) {
    const body = { tasks, prompt: 'And the LORD said', raw: true, max_tokens: 12, ignore_eos: true, ...sampling };
    const alone = (await post('/v1/ensembles/generate', body)).json();
    t.equal(alone.token_ids.length, 12);
    const noise = Array.from({ length: 12 }, (_, i) => post(`/v1/tasks/${['pos-prefix', 'kjv-prompt', 'base'][i % 3]}/generate`, { prompt: `noise ${i}`, max_tokens: 8, temperature: 1 }));
    const [mixed] = await Promise.all([post('/v1/ensembles/generate', body), ...noise]);
    t.same(mixed.json().token_ids, alone.token_ids, JSON.stringify(sampling));
  }
  const missing = await post('/v1/ensembles/generate', { tasks: ['kjv-prompt', 'nope'], prompt: 'x' });
  t.equal(missing.statusCode, 404);
  t.match(missing.json().error.message, /nope/);
});

t.test('ensemble generate streams the same tokens', async (t) => {
  await server.app.listen({ port: 0, host: '127.0.0.1' });
  const port = (server.app.server.address() as { port: number }).port;
  const body = { tasks: ['kjv-prompt', 'pos-bitfit'], prompt: 'In the beginning', raw: true, max_tokens: 10, temperature: 0, ignore_eos: true };
  const plain = (await post('/v1/ensembles/generate', body)).json();
  const res = await fetch(`http://127.0.0.1:${port}/v1/ensembles/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }) });
  const events = (await res.text()).split('\n\n').filter((e) => e && e !== 'data: [DONE]').map((e) => JSON.parse(e.slice(6)));
  t.same(events.filter((e) => e.token_id !== undefined).map((e) => e.token_id), plain.token_ids);
  t.equal(events.map((e) => e.text ?? '').join(''), plain.text);
});

t.test('weights near the largest double mean what equal weights mean; labels named __proto__ or with a newline are scored like any other', async (t) => {
  const tasks = ['pos-prefix', 'pos-bitfit'];
  const equal = (await post('/v1/ensembles/classify', { tasks, input: 'ocean' })).json().results[0];
  const huge = await post('/v1/ensembles/classify', { tasks, input: 'ocean', weights: [9e307, 9e307] });
  t.equal(huge.statusCode, 200);
  t.same(huge.json().results[0].probabilities, equal.probabilities, 'their sum would overflow to Infinity');
  const labels = ['__proto__', 'noun', 'two\nlines'];
  const single = await post('/v1/tasks/pos-prefix/classify', { input: 'ocean', labels });
  t.equal(single.statusCode, 200);
  t.same(Object.keys(single.json().results[0].scores).sort(), labels.sort());
  const ensemble = await post('/v1/ensembles/classify', { tasks, input: 'ocean', labels });
  t.equal(ensemble.statusCode, 200);
  const p = ensemble.json().results[0].probabilities;
  t.same(Object.keys(p).sort(), labels.sort());
  t.ok(Math.abs(p.__proto__ + p.noun + p['two\nlines'] - 1) < 1e-9, 'every label has a probability, summing to 1');
});

t.test("ensemble generate with penalties: they count the ensemble's own tokens (a member of negligible weight beside one task gives that task's penalised tokens)", async (t) => {
  const c = reference.cases.filter((x) => x.adapter === 'kjv-prompt').sort((a, b) => b.greedy.length - a.greedy.length)[0];
  const body = { prompt: c.text, raw: true, max_tokens: 16, temperature: 0, presence_penalty: 2, frequency_penalty: 2, ignore_eos: true };
  const alone = (await post('/v1/tasks/kjv-prompt/generate', body)).json();
  const both = await post('/v1/ensembles/generate', { tasks: ['kjv-prompt', 'base'], weights: [1, 1e-9], ...body });
  t.equal(both.statusCode, 200);
  t.same(both.json().token_ids, alone.token_ids);
  t.notSame(alone.token_ids, c.greedy.slice(0, 16), 'the penalties changed the greedy tokens');
});
