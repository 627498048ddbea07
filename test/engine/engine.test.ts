import { pino } from 'pino';
import t from 'tap';
import { Engine } from '../../src/engine/engine.js';
import type { GenerateJob, Job, ScoreJob } from '../../src/engine/jobs.js';
import { FakeExecutor } from './fake-executor.js';

const log = pino({ level: 'silent' });
let ids = 1;

function gen(): GenerateJob {
  return {
    type: 'generate', id: ids++, task: 't', adapter: null, tokens: [1, 2], maxTokens: 2,
    sampling: { temperature: 0, topP: 1, topK: 0, seed: 1, logprobs: 0 },
    onToken: () => 'length', finish: () => {}, cancelled: false, enqueuedAt: 0,
  };
}

function score(rows: number, tokens: number): ScoreJob {
  return {
    type: 'score', id: ids++, task: 's', adapter: null,
    rows: Array.from({ length: rows }, () => ({ context: Array(tokens - 1).fill(1), targets: [2] })),
    done: () => {}, cancelled: false, enqueuedAt: 0,
  };
}

/** An engine whose lanes are not started: what is submitted stays queued where it was placed. */
function engine(lanes: number, opts: { maxQueue?: number; maxScoreTokens?: number } = {}) {
  const execs = Array.from({ length: lanes }, () => new FakeExecutor());
  const e = new Engine(execs.map((x) => x.asExecutor()), { maxBatchSize: 8, maxBatchTokens: 1000, maxWorkerAdapters: 8, batchWaitMs: 0, maxQueue: opts.maxQueue ?? 100, maxScoreTokens: opts.maxScoreTokens }, log);
  return { e, execs };
}

const refusal = (f: () => void) => {
  try {
    f();
  } catch (err) {
    return (err as { code: string }).code;
  }
  return 'accepted';
};

t.test('a request is admitted whole or not at all', async (t) => {
  const { e } = engine(1, { maxQueue: 3 });
  e.submit(gen());
  t.equal(refusal(() => e.submitAll([gen(), gen(), gen()])), 'overloaded');
  t.equal(e.queueDepth, 1, 'no job of the refused request was queued');
  t.equal(refusal(() => e.submitAll([gen(), gen()])), 'accepted');
  t.equal(e.queueDepth, 3);
});

t.test('an empty queue takes a request of more prompts than MAX_QUEUE', async (t) => {
  const { e } = engine(1, { maxQueue: 2 });
  t.equal(refusal(() => e.submitAll([gen(), gen(), gen(), gen()])), 'accepted');
});

t.test('MAX_SCORE_TOKENS bounds the tokens one request scores (413), and nothing is queued', async (t) => {
  const { e } = engine(1, { maxScoreTokens: 1000 });
  t.equal(refusal(() => e.submit(score(64, 16))), 'payload_too_large');
  t.equal(e.queueDepth, 0);
  t.equal(refusal(() => e.submit(score(62, 16))), 'accepted');
});

t.test('placement counts score rows: a generate request goes to the lane without a big classify', async (t) => {
  const { e } = engine(2);
  e.submit(gen());
  e.submit(score(64, 8)); // the second lane, empty so far
  const next: Job = gen();
  e.submit(next);
  t.equal(e.lanes[0].scheduler.waiting, 2, 'two generate jobs on the first lane');
  t.equal(e.lanes[1].scheduler.load, 64);
});

t.test('no lane can run: 503 worker_crashed, nothing queued', async (t) => {
  const { e, execs } = engine(2);
  execs[0].canRun = false;
  e.submit(gen());
  t.equal(e.lanes[1].scheduler.waiting, 1, 'a lane whose worker is backing off gets nothing');
  execs[1].canRun = false;
  t.equal(e.canRun, false);
  t.equal(refusal(() => e.submit(gen())), 'worker_crashed');
  t.equal(e.queueDepth, 1);
});

t.test('cancelled jobs are counted across lanes', async (t) => {
  const { e } = engine(2);
  const jobs = [gen(), gen()];
  e.submitAll(jobs);
  for (const j of jobs) j.cancelled = true;
  for (const l of e.lanes) l.scheduler.plan();
  t.equal(e.cancelled, 2);
});

t.test('a drain waits for score rows in a step still in flight; they finish, not fail', async (t) => {
  const { e, execs } = engine(1);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  // The worker holds the first step (every row of the score job) until released.
  const step = execs[0].step.bind(execs[0]);
  let held = false;
  execs[0].step = async (plan) => {
    if (plan.score.length > 0) {
      held = true;
      await gate;
    }
    return step(plan);
  };
  let outcome = 'pending';
  const job = score(4, 4);
  job.done = (lp, err) => (outcome = err ? (err as unknown as { code: string }).code : lp ? 'scored' : 'cancelled');
  e.start();
  e.submit(job);
  while (!held) await new Promise((r) => setImmediate(r));
  const drained = e.drain(2000);
  setTimeout(release, 100);
  t.equal(await drained, true, 'drained once the step came back');
  t.equal(outcome, 'scored');
  await e.stop();
});
