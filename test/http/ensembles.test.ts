import t from 'tap';
import { adapterFiles, adaptersCopy, multipart, startServer } from '../helpers.js';

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
  body.results.forEach((r: { members: { probabilities: Record<string, number> }[] }, i: number) => {
    for (const l of LABELS) t.ok(Math.abs(r.members[1].probabilities[l] - expected[i % WORDS.length][l]) <= 1e-6, `row ${i} ${l}`);
  });
});
