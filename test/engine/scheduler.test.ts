import { pino } from 'pino';
import t from 'tap';
import type { GenerateJob, ScoreJob } from '../../src/engine/jobs.js';
import { applyEvent } from '../../src/engine/output-processor.js';
import { Scheduler } from '../../src/engine/scheduler.js';
import type { AdapterTensors, StepPlan } from '../../src/protocol.js';
import { fakeResult } from './fake-executor.js';

let ids = 1;
function gen(task: string, maxTokens: number, finished: string[] = []): GenerateJob {
  let n = 0;
  const job: GenerateJob = {
    type: 'generate', id: ids++, task, adapter: null, tokens: [1, 2, 3], maxTokens,
    sampling: { temperature: 0, topP: 1, topK: 0, seed: 1, logprobs: 0 },
    onToken: () => (++n >= maxTokens ? 'length' : 'continue'),
    finish: () => finished.push(task), cancelled: false, enqueuedAt: 0,
  };
  return job;
}

const log = pino({ level: 'silent' });

/** Applies a result and dispatches the events as the lane does. */
function apply(s: Scheduler, plan: StepPlan, result = fakeResult(plan)): void {
  for (const ev of [...s.takeEvents(), ...s.update(result)]) applyEvent(ev, s, log);
}

function scoreJob(task: string, rows: number, tokens: number, done: ScoreJob['done'] = () => {}): ScoreJob {
  return {
    type: 'score', id: ids++, task, adapter: null,
    rows: Array.from({ length: rows }, () => ({ context: Array(tokens - 1).fill(1), targets: [3] })),
    done, cancelled: false, enqueuedAt: 0,
  };
}

t.test('round-robin admission: one waiting task is not starved by a flood', async (t) => {
  const s = new Scheduler({ maxBatchSize: 4, maxBatchTokens: 1000, maxWorkerAdapters: 8 });
  const finished: string[] = [];
  for (let i = 0; i < 1000; i++) s.enqueue(gen('flood', 3, finished));
  s.enqueue(gen('lonely', 3, finished));
  const first = s.plan();
  const admittedTasks = first.prefill.length;
  t.equal(admittedTasks, 4);
  // The lonely task's only job is admitted in the first step despite 1000 queued before it.
  let step = 0;
  for (let plan = first; !finished.includes('lonely') && step < 10; plan = s.plan(), step++) apply(s, plan);
  t.ok(step <= 3, `lonely finished after ${step} steps`);
});

t.test('continuous batching: finished rows leave and new rows join between steps', async (t) => {
  const s = new Scheduler({ maxBatchSize: 2, maxBatchTokens: 1000, maxWorkerAdapters: 8 });
  const finished: string[] = [];
  s.enqueue(gen('a', 1, finished));
  s.enqueue(gen('b', 4, finished));
  s.enqueue(gen('c', 2, finished));
  const p1 = s.plan();
  t.same(p1.prefill.map((p) => p.seq).length, 2);
  apply(s, p1); // 'a' finishes on its first token
  t.same(finished, ['a']);
  const p2 = s.plan();
  t.equal(p2.drop.length, 1, 'the finished row is dropped');
  t.equal(p2.decode.length, 1, "'b' keeps decoding");
  t.equal(p2.prefill.length, 1, "'c' joins in the same step");
});

t.test('the batch token budget bounds a prefill, padded to its longest row', async (t) => {
  const s = new Scheduler({ maxBatchSize: 64, maxBatchTokens: 10, maxWorkerAdapters: 8 });
  for (let i = 0; i < 5; i++) s.enqueue(gen('t', 2));
  t.equal(s.plan().prefill.length, 3, '3 rows × 3 tokens fit in 10');
});

t.test('with the workers splitting runs, short prompts join a long one in the same prefill step', async (t) => {
  const admitted = (prefillRunCost?: number) => {
    const s = new Scheduler({ maxBatchSize: 64, maxBatchTokens: 4096, maxWorkerAdapters: 8, prefillRunCost });
    const long = gen('long', 1);
    long.tokens = Array(2000).fill(1);
    s.enqueue(long);
    for (let i = 0; i < 100; i++) s.enqueue({ ...gen(`short${i % 8}`, 1), tokens: Array(20).fill(1) });
    return s.plan().prefill.length;
  };
  t.equal(admitted(24), 64, 'the long row and 63 short ones (the batch is full): 2,000 + 63 × 20 + 24 ≤ 4,096');
  t.equal(admitted(), 2, 'one padded run: 2 × 2,000 fit, 3 do not');
});

t.test('score jobs are split across steps and reassembled in order', async (t) => {
  const s = new Scheduler({ maxBatchSize: 64, maxBatchTokens: 8, maxWorkerAdapters: 8 });
  let got: number[][] | null = null;
  const job: ScoreJob = {
    type: 'score', id: ids++, task: 'x', adapter: null,
    rows: Array.from({ length: 5 }, (_, i) => ({ context: [1, 2], targets: Array(i + 1).fill(3) })),
    done: (lp) => (got = lp), cancelled: false, enqueuedAt: 0,
  };
  s.enqueue(job);
  let steps = 0;
  while (s.hasWork() && steps < 20) {
    apply(s, s.plan());
    steps++;
  }
  t.ok(steps > 1, `took ${steps} steps`);
  t.same(got!.map((r) => r.length), [1, 2, 3, 4, 5]);
});

t.test('a cancelled running job is dropped at the next step', async (t) => {
  const s = new Scheduler({ maxBatchSize: 4, maxBatchTokens: 100, maxWorkerAdapters: 8 });
  const job = gen('a', 100);
  s.enqueue(job);
  apply(s, s.plan());
  job.cancelled = true;
  const p = s.plan();
  t.equal(p.drop.length, 1);
  t.equal(p.decode.length, 0);
  t.equal(s.runningCount, 0);
});

t.test('update() reports tokens as events and calls no request callback', async (t) => {
  const s = new Scheduler({ maxBatchSize: 4, maxBatchTokens: 100, maxWorkerAdapters: 8 });
  const job = gen('a', 100);
  job.onToken = () => {
    throw new Error('update must not call me');
  };
  s.enqueue(job);
  const events = s.update(fakeResult(s.plan()));
  t.same(events.map((e) => e.type), ['token']);
  t.equal(s.runningCount, 1, 'the row runs until the output processor retires it');
});

t.test('a large score job leaves room for a generate request that arrives while it runs (finding 11)', async (t) => {
  const s = new Scheduler({ maxBatchSize: 64, maxBatchTokens: 100, maxWorkerAdapters: 8 });
  s.enqueue(scoreJob('classify', 200, 10));
  apply(s, s.plan());
  const finished: string[] = [];
  s.enqueue(gen('chat', 2, finished));
  const p = s.plan();
  t.equal(p.prefill.length, 1, 'the generate request joins the next step');
  t.ok(p.score.length > 0, 'the score job goes on in the same step');
  apply(s, p);
  apply(s, s.plan());
  t.same(finished, ['chat'], 'and finishes while the score job still has rows to go');
  t.ok(s.hasWork());
});

t.test('two large score jobs share steps: neither waits for the other to finish', async (t) => {
  const s = new Scheduler({ maxBatchSize: 64, maxBatchTokens: 100, maxWorkerAdapters: 8 });
  s.enqueue(scoreJob('a', 100, 10));
  apply(s, s.plan());
  s.enqueue(scoreJob('b', 100, 11));
  const widths = new Set(s.plan().score.map((r) => r.context.length + r.targets.length));
  t.same([...widths].sort(), [10, 11], 'rows of both jobs in one step');
});

t.test('load counts score rows, not jobs', async (t) => {
  const s = new Scheduler({ maxBatchSize: 64, maxBatchTokens: 100, maxWorkerAdapters: 8 });
  s.enqueue(scoreJob('classify', 50, 10));
  t.equal(s.load, 50, 'queued rows');
  apply(s, s.plan());
  t.ok(s.load > 0 && s.load < 50, `rows still to score: ${s.load}`);
  s.enqueue(gen('g', 3));
  t.equal(s.waiting, 1);
});

t.test('a row the worker rejects fails its own request only; a rejected score row fails its whole job', async (t) => {
  const s = new Scheduler({ maxBatchSize: 8, maxBatchTokens: 1000, maxWorkerAdapters: 8 });
  const errors: (Error | null)[] = [];
  const bad = gen('bad', 5);
  bad.finish = (e) => errors.push(e);
  const good = gen('good', 2);
  let scoreErr: Error | null = null;
  const score = scoreJob('score', 3, 4, (_lp, e) => (scoreErr = e));
  s.enqueue(bad);
  s.enqueue(good);
  s.enqueue(score);
  const p = s.plan();
  const badSeq = p.prefill[0].seq;
  const result = fakeResult(p);
  result.tokens = result.tokens.filter((c) => c.seq !== badSeq);
  result.scores = result.scores.slice(1);
  result.rejected = [
    { row: badSeq, code: 'invalid_adapter', reason: 'broken' },
    { row: p.score[0].id, code: 'invalid_row', reason: 'token id 99999 is outside the vocabulary' },
  ];
  apply(s, p, result);
  t.equal(errors.length, 1);
  t.match(errors[0], { code: 'invalid_adapter', status: 400 });
  t.match(scoreErr, { code: 'invalid_request', message: /outside the vocabulary/ });
  t.equal(s.runningCount, 1, 'the good row runs on');
  const next = s.plan();
  t.same(next.decode.map((d) => d.seq), [p.prefill[1].seq]);
  t.same(next.drop, [], 'a rejected row never joined the batch: nothing to drop');
  t.equal(next.score.length, 0, 'the failed score job plans no more rows');
});

t.test('cancelled jobs are counted and completed through events, queued or running', async (t) => {
  const s = new Scheduler({ maxBatchSize: 1, maxBatchTokens: 100, maxWorkerAdapters: 8 });
  const running = gen('a', 100);
  const queued = gen('b', 100);
  s.enqueue(running);
  s.enqueue(queued);
  apply(s, s.plan());
  running.cancelled = true;
  queued.cancelled = true;
  s.plan();
  t.same(s.takeEvents().map((e) => e.type), ['cancelled', 'cancelled']);
  t.equal(s.cancelled, 2);
  t.equal(s.waiting, 0);
  t.equal(s.load, 0);
});

t.test('an ensemble joins whole, takes one token per step for all its rows, and leaves whole', async (t) => {
  const s = new Scheduler({ maxBatchSize: 4, maxBatchTokens: 1000, maxWorkerAdapters: 8 });
  const tokens: number[] = [];
  const ensemble = (n: number): GenerateJob => {
    const job = gen('ens', 3);
    const inner = job.onToken;
    job.onToken = (c) => (tokens.push(c.seq), inner(c));
    job.members = Array.from({ length: n }, (_, k) => ({ adapter: null, tokens: [1, 2, 3 + k], weight: 1 / n }));
    return job;
  };
  const first = ensemble(3);
  const second = ensemble(3);
  s.enqueue(first);
  s.enqueue(second);
  let plan = s.plan();
  t.equal(plan.prefill.length, 3, 'the first ensemble takes three of four slots; the second waits whole');
  const leader = plan.prefill[0].seq;
  t.same(plan.prefill.map((p) => p.group?.leader), [leader, leader, leader]);
  t.same(plan.prefill.map((p) => p.tokens[2]), [3, 4, 5], 'each member keeps its own prompt');
  apply(s, plan);
  t.same(tokens, [leader], 'one token event per step, under the leader');
  plan = s.plan();
  t.same(plan.decode.map((d) => d.seq), [leader, leader + 1, leader + 2], 'every member decodes (the worker feeds each the group\'s token)');
  t.same(plan.decode.map((d) => d.token), [undefined, undefined, undefined]);
  t.equal(plan.prefill.length, 0);
  apply(s, plan);
  plan = s.plan();
  apply(s, plan); // third token: the job is done and its rows leave together
  plan = s.plan();
  t.same(plan.drop.sort(), [leader, leader + 1, leader + 2]);
  t.equal(plan.prefill.length, 3, 'the second ensemble joins once the first left');
  second.cancelled = true;
  apply(s, plan);
  plan = s.plan();
  t.equal(plan.drop.length, 3, 'a cancelled ensemble drops all its rows');
  t.equal(s.cancelled, 1, 'and counts once');
  t.equal(s.runningCount, 0);
});

t.test('planning ahead: the next step is planned before the last result, and no row decodes past max_tokens', async (t) => {
  const s = new Scheduler({ maxBatchSize: 4, maxBatchTokens: 1000, maxWorkerAdapters: 8 });
  const finished: string[] = [];
  s.enqueue(gen('a', 3, finished));
  const p1 = s.plan(); // prefill: token 1
  const seq = p1.prefill[0].seq;
  const p2 = s.plan(); // before p1's result: token 2
  t.same(p2.decode, [{ seq }], 'decodes with the token the worker chose (none named here)');
  apply(s, p1);
  const p3 = s.plan(); // token 3, the last
  t.same(p3.decode, [{ seq }]);
  apply(s, p2);
  const p4 = s.plan();
  t.same(p4.decode, [], 'its last token is in flight: no fourth');
  t.same(p4.drop, [seq], 'and the worker may free its KV already');
  apply(s, p3);
  t.same(finished, ['a']);
  t.same(s.plan().drop, [], 'retiring it does not drop it twice');
  t.equal(s.runningCount, 0);
});

t.test('planning ahead: a row that stops early computed one token more, which is ignored', async (t) => {
  const s = new Scheduler({ maxBatchSize: 4, maxBatchTokens: 1000, maxWorkerAdapters: 8 });
  const seen: number[] = [];
  const job = gen('a', 10);
  job.onToken = (c) => (seen.push(c.token), 'stop');
  s.enqueue(job);
  const p1 = s.plan();
  const seq = p1.prefill[0].seq;
  const p2 = s.plan();
  t.same(p2.decode.map((d) => d.seq), [seq], 'planned before the stop is known');
  apply(s, p1); // the first token stops it
  const p3 = s.plan();
  t.same(p3.drop, [seq]);
  t.same(p3.decode, []);
  apply(s, p2, { ...fakeResult(p2), tokens: [{ seq, token: 99 }] });
  t.same(seen, [7], 'the token computed after the stop never reaches the request');
  t.equal(s.runningCount, 0);
});

t.test('the token budget counts what the prefill run feeds: a cached soft prompt is not fed again', async (t) => {
  const soft: AdapterTensors = { key: 'soft', kind: 'prompt', virtualTokens: 100, embeddings: new Float32Array(0) };
  const admitted = (promptKvCache: boolean | undefined) => {
    const s = new Scheduler({ maxBatchSize: 64, maxBatchTokens: 200, maxWorkerAdapters: 8, promptKvCache });
    for (let i = 0; i < 30; i++) s.enqueue({ ...gen('p', 4), adapter: soft, tokens: Array(10).fill(1) });
    return s.plan().prefill.length;
  };
  t.equal(admitted(undefined), 20, 'cache on (the default): 20 rows × 10 tokens fill the budget of 200');
  t.equal(admitted(false), 1, 'PROMPT_KV_CACHE=off: each row is 110 wide, so one row per step');
  // A score row with no context feeds its soft prompt again: its width counts it.
  const s = new Scheduler({ maxBatchSize: 64, maxBatchTokens: 200, maxWorkerAdapters: 8 });
  s.enqueue({ ...scoreJob('p', 3, 1), adapter: soft }); // no context, one target each
  t.equal(s.plan().score.length, 1, 'three 101-wide rows do not fit 200 together: one per step');
});

t.test('the worker holds adapters within a count and a byte budget: the least recently used idle ones are forgotten first, a running row keeps its own', async (t) => {
  // Prompt adapters of 1 KiB each (256 floats): four fit in 4 KiB.
  const adapter = (key: string): AdapterTensors => ({ key, kind: 'prompt', virtualTokens: 1, embeddings: new Float32Array(256) });
  const run = (limits: { count: number; bytes?: number }) => {
    const s = new Scheduler({ maxBatchSize: 8, maxBatchTokens: 1000, maxWorkerAdapters: limits.count, maxWorkerAdapterBytes: limits.bytes });
    const plans: StepPlan[] = [];
    const serve = (key: string, maxTokens = 1) => s.enqueue({ ...gen(key, maxTokens), adapter: adapter(key) });
    const step = () => {
      const p = s.plan();
      plans.push(p);
      apply(s, p);
      return p;
    };
    serve('long', 1000); // runs through every step below
    for (const key of ['a', 'b', 'c']) (serve(key), step());
    serve('a'); // a is used again: now b is the least recently used idle adapter
    step();
    for (const key of ['d', 'e']) (serve(key), step());
    return plans;
  };
  const byBytes = run({ count: 100, bytes: 4 * 1024 });
  t.same(byBytes.map((p) => p.adapters.map((a) => a.key)), [['long', 'a'], ['b'], ['c'], [], ['d'], ['e']], 'each adapter is sent once while held');
  t.same(byBytes.map((p) => p.forget), [[], [], [], [], ['b'], ['c']], 'past 4 KiB: b, then c (a was used after them; long runs)');
  const byCount = run({ count: 4 });
  t.same(byCount.flatMap((p) => p.forget), ['b', 'c'], 'the count bound forgets in the same order');
  // 2 KiB: long and one other at a time (admission waits for bytes, below); the idle ones are forgotten.
  const tight = run({ count: 100, bytes: 2 * 1024 });
  t.notOk(tight.some((p) => p.forget.includes('long')), "a running row's adapter is never forgotten");
  t.same(tight.map((p) => p.forget), [[], ['a'], ['b'], ['c'], ['a'], ['d']], 'an idle one is, at the next step');
  t.same(tight[3].adapters.map((a) => a.key), ['a'], 'and one forgotten is sent again when a row needs it');
});

t.test("a job whose adapter would take the batch's adapters past the byte budget waits for rows to finish, and no other adapter job passes it", async (t) => {
  const adapter = (key: string, floats = 256): AdapterTensors => ({ key, kind: 'prompt', virtualTokens: 1, embeddings: new Float32Array(floats) });
  const s = new Scheduler({ maxBatchSize: 8, maxBatchTokens: 1000, maxWorkerAdapters: 100, maxWorkerAdapterBytes: 2 * 1024 });
  const admitted: string[][] = [];
  const serve = (name: string, a: AdapterTensors | null, maxTokens: number) => s.enqueue({ ...gen(name, maxTokens), adapter: a });
  const step = () => {
    const p = s.plan();
    admitted.push(p.prefill.map((r) => r.adapter ?? 'base'));
    apply(s, p);
  };
  const x = adapter('x');
  serve('x', x, 3);
  serve('y', adapter('y'), 3);
  step(); // x and y: 2 KiB, the budget
  serve('z', adapter('z'), 2);
  serve('x-again', x, 2); // x is in the batch already, but z waits ahead of it
  serve('base', null, 2); // no adapter: not held back
  for (let i = 0; i < 5; i++) step();
  t.same(admitted, [['x', 'y'], ['base'], [], ['z', 'x'], [], []], 'z joins once x and y have finished, and x again beside it (2 KiB)');
  // An adapter larger than the whole budget runs, alone among adapters.
  serve('huge', adapter('huge', 1024), 2);
  serve('small', adapter('small'), 2);
  const p = s.plan();
  t.same(p.prefill.map((r) => r.adapter), ['huge']);
  apply(s, p);
  t.same(s.plan().prefill, [], 'the small one waits for it');
});

t.test("a LoRA costs the batch its tensors and its columns of the stacks, which span every module, whichever it targets", async (t) => {
  // Rank 8 on one small module: 64 bytes of tensors, but 8 × 256 bytes of stacks at 256 bytes per rank.
  const lora = (key: string): AdapterTensors => ({ key, kind: 'lora', virtualTokens: 0, lora: { rank: 8, modules: { m: { a: new Float32Array(8), b: new Float32Array(8) } } } });
  const run = (loraStackBytesPerRank: number) => {
    const s = new Scheduler({ maxBatchSize: 8, maxBatchTokens: 1000, maxWorkerAdapters: 100, maxWorkerAdapterBytes: 3 * 1024, loraStackBytesPerRank });
    for (const key of ['p', 'q']) s.enqueue({ ...gen(key, 3), adapter: lora(key) });
    return s.plan().prefill.map((r) => r.adapter);
  };
  t.same(run(0), ['p', 'q'], 'by their tensors alone, both fit');
  t.same(run(256), ['p'], 'with their stacks (2 KiB each), one at a time');
});

t.test("after a reset (a failed step), the worker's adapters are counted again from nothing", async (t) => {
  const adapter = (key: string): AdapterTensors => ({ key, kind: 'prompt', virtualTokens: 1, embeddings: new Float32Array(256) });
  const s = new Scheduler({ maxBatchSize: 8, maxBatchTokens: 1000, maxWorkerAdapters: 100, maxWorkerAdapterBytes: 2 * 1024 });
  const serve = (key: string) => s.enqueue({ ...gen(key, 1), adapter: adapter(key) });
  for (const key of ['a', 'b']) serve(key);
  apply(s, s.plan());
  s.reset();
  for (const key of ['c', 'd']) serve(key);
  const p = s.plan();
  t.ok(p.reset, 'the worker is told to drop what it held');
  t.same(p.adapters.map((a) => a.key), ['c', 'd']);
  t.same(p.forget, []);
  apply(s, p);
  serve('e');
  t.same(s.plan().forget, ['c'], 'with e, 3 KiB held: one forgotten brings it within 2 KiB (a and b no longer count)');
});
