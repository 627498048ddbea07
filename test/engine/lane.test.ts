import { pino } from 'pino';
import t from 'tap';
import type { GenerateJob } from '../../src/engine/jobs.js';
import { Lane } from '../../src/engine/lane.js';
import { place } from '../../src/engine/engine.js';
import { fakeResult } from './fake-executor.js';
import { WorkerCrashedError } from '../../src/executor/executor.js';
import { FakeExecutor } from './fake-executor.js';

const log = pino({ level: 'silent' });
let ids = 1;

/** A generate job whose outcome lands in a promise: the error's code, or 'ok'. */
function job(maxTokens: number, onToken?: GenerateJob['onToken']): { job: GenerateJob; outcome: Promise<string> } {
  let n = 0;
  let settle!: (v: string) => void;
  const outcome = new Promise<string>((r) => (settle = r));
  const j: GenerateJob = {
    type: 'generate', id: ids++, task: 't', adapter: null, tokens: [1, 2], maxTokens,
    sampling: { temperature: 0, topP: 1, topK: 0, seed: 1, logprobs: 0 },
    onToken: onToken ?? (() => (++n >= maxTokens ? 'length' : 'continue')),
    finish: (err) => settle(err ? (err as { code?: string }).code ?? err.message : 'ok'),
    cancelled: false, enqueuedAt: 0,
  };
  return { job: j, outcome };
}

function lane(exec = new FakeExecutor(), batchWaitMs = 0) {
  const l = new Lane(exec.asExecutor(), { maxBatchSize: 8, maxBatchTokens: 1000, maxWorkerAdapters: 8, batchWaitMs }, log, () => {});
  l.start();
  t.teardown(() => l.stop(new Error('test over')));
  return { l, exec };
}

t.test('a request whose token callback throws fails alone; its batch and the loop go on', async (t) => {
  const { l } = lane();
  const good = job(5);
  const bad = job(5, () => {
    throw new Error('a stop-string bug, or a write to a closed socket');
  });
  l.enqueue(good.job);
  l.enqueue(bad.job);
  t.equal(await bad.outcome, 'internal_error');
  t.equal(await good.outcome, 'ok');
  const later = job(2);
  l.enqueue(later.job);
  t.equal(await later.outcome, 'ok', 'the lane still serves');
  t.equal(l.scheduler.runningCount, 0, 'the failed row was retired');
  t.equal(l.restarts, 0);
});

t.test('a request whose finish callback throws does not stop the others', async (t) => {
  const { l } = lane();
  const bad = job(1);
  bad.job.finish = () => {
    throw new Error('response already sent');
  };
  const good = job(3);
  l.enqueue(bad.job);
  l.enqueue(good.job);
  t.equal(await good.outcome, 'ok');
});

t.test('a failure of the loop itself fails what it held and restarts the loop', async (t) => {
  const { l } = lane();
  const plan = l.scheduler.plan.bind(l.scheduler);
  let once = true;
  l.scheduler.plan = () => {
    const p = plan();
    if (once && p.decode.length > 0) {
      once = false;
      throw new Error('a scheduler bug');
    }
    return p;
  };
  const held = job(5);
  l.enqueue(held.job);
  t.equal(await held.outcome, 'internal_error');
  t.equal(l.restarts, 1);
  const later = job(3);
  l.enqueue(later.job);
  t.equal(await later.outcome, 'ok', 'the restarted loop serves');
});

t.test('a crashed step fails the rows it held with worker_crashed; queued requests run after', async (t) => {
  const { l, exec } = lane();
  exec.next = () => {
    throw new WorkerCrashedError('inference worker exited with code 3');
  };
  const held = job(3);
  l.enqueue(held.job);
  t.equal(await held.outcome, 'worker_crashed');
  const later = job(3);
  l.enqueue(later.job);
  t.equal(await later.outcome, 'ok');
  t.ok(exec.plans.at(-1)!.reset || exec.plans.some((p) => p.reset), 'the next plan resets the worker batch');
});

t.test('BATCH_WAIT_MS: a lone request runs at once, also one sent right after the previous answer; a request right behind another waits for company', async (t) => {
  const { l, exec } = lane(new FakeExecutor(), 50);
  const lone = job(2);
  l.enqueue(lone.job);
  t.equal(await lone.outcome, 'ok');
  t.same(l.batchWait, { waited: 0, skipped: 1 }, 'the lone request did not wait');
  // One client's next request soon after the answer came (the lane has gone idle): close behind
  // the previous arrival, well inside the 5 × 50 ms window, but alone.
  await new Promise((r) => setTimeout(r, 20));
  const next = job(2);
  l.enqueue(next.job);
  t.equal(await next.outcome, 'ok');
  t.same(l.batchWait, { waited: 0, skipped: 2 }, 'a request sent after the previous one was answered did not wait');
  // Idle again long after: still alone.
  await new Promise((r) => setTimeout(r, 300));
  const later = job(2);
  l.enqueue(later.job);
  t.equal(await later.outcome, 'ok');
  t.same(l.batchWait, { waited: 0, skipped: 3 });
  // Two requests arriving together while the lane is idle: the first waits, and both share one prefill.
  await new Promise((r) => setTimeout(r, 300));
  const plans = exec.plans.length;
  const a = job(2);
  const b = job(2);
  l.enqueue(a.job);
  l.enqueue(b.job);
  t.same(await Promise.all([a.outcome, b.outcome]), ['ok', 'ok']);
  t.same(l.batchWait, { waited: 1, skipped: 3 }, 'company was likely: it waited once');
  t.equal(exec.plans[plans].prefill.length, 2, 'both prefilled in the first step');
  // Over a second after the last overlap, one client's requests close behind each other do not wait.
  await new Promise((r) => setTimeout(r, 1100));
  for (const gapMs of [0, 20]) {
    await new Promise((r) => setTimeout(r, gapMs));
    const alone = job(2);
    l.enqueue(alone.job);
    t.equal(await alone.outcome, 'ok');
  }
  t.same(l.batchWait, { waited: 1, skipped: 5 }, 'the overlap had expired: neither waited');
});

t.test('the lane keeps the worker\'s latest KV batch stats', async (t) => {
  const exec = new FakeExecutor();
  const { l } = lane(exec);
  exec.next = (plan) => ({ ...fakeResult(plan), kv: { rows: 1, slots: 2, capacity: 40, bytes: 1234 } });
  const j = job(3);
  l.enqueue(j.job);
  t.equal(await j.outcome, 'ok');
  t.same(l.kv, { rows: 1, slots: 2, capacity: 40, bytes: 1234 });
});

t.test('placement: under low load work packs on one lane, above it spreads to the least loaded', async (t) => {
  const lanes = [0, 1, 2].map(() => new Lane(new FakeExecutor().asExecutor(), { maxBatchSize: 8, maxBatchTokens: 1000, maxWorkerAdapters: 8, batchWaitMs: 0 }, log, () => {}));
  const put = (rows = 1) => {
    const target = place(lanes, rows);
    target.enqueue(job(1).job);
    return lanes.indexOf(target);
  };
  t.equal(put(), 0);
  t.equal(put(), 0, 'two sequences in all: the second joins the first one\'s lane');
  t.equal(put(), 1, 'a third spreads to an idle lane');
  t.equal(put(), 2);
  t.equal(put(), 1);
  t.same(lanes.map((l) => l.load), [2, 2, 1]);
  t.equal(place([lanes[2], lanes[1]], 1), lanes[2], 'least loaded when above the low-load bound');
});

t.test('placement never packs beyond a lane\'s batch: with MAX_BATCH_SIZE 1 two sequences run on two lanes', async (t) => {
  const lanes = [0, 1].map(() => new Lane(new FakeExecutor().asExecutor(), { maxBatchSize: 1, maxBatchTokens: 1000, maxWorkerAdapters: 8, batchWaitMs: 0 }, log, () => {}));
  const first = place(lanes, 1);
  first.enqueue(job(1).job);
  const second = place(lanes, 1);
  t.not(second, first, 'the busiest lane is full: the idle one takes the second sequence');
});

t.test('the lane posts step N+1 before it applies step N: the worker never waits for this thread', async (t) => {
  const exec = new FakeExecutor();
  const { l } = lane(exec);
  let pending = 0;
  let most = 0;
  const step = exec.step.bind(exec);
  exec.step = async (plan) => {
    most = Math.max(most, ++pending);
    try {
      return await step(plan);
    } finally {
      pending--;
    }
  };
  const j = job(3);
  l.enqueue(j.job);
  t.equal(await j.outcome, 'ok');
  t.equal(most, 2, 'two steps were posted at once');
  const kinds = exec.plans.map((p) => (p.prefill.length ? 'prefill' : p.decode.length ? 'decode' : p.drop.length ? 'drop' : 'empty'));
  t.same(kinds, ['prefill', 'decode', 'decode', 'drop'], 'three tokens, none computed past max_tokens; the KV is freed once the last is planned');
  t.equal(l.scheduler.runningCount, 0);
});

t.test('a failed step voids the step planned on top of it; the lane recovers', async (t) => {
  const exec = new FakeExecutor();
  const { l } = lane(exec);
  exec.next = () => {
    throw new WorkerCrashedError('inference worker exited with code 3');
  };
  const held = job(5);
  const tokens: number[] = [];
  held.job.onToken = (c) => (tokens.push(c.token), 'continue');
  l.enqueue(held.job);
  t.equal(await held.outcome, 'worker_crashed');
  t.same(tokens, [], 'the decode planned after the failed prefill was never applied');
  const later = job(2);
  l.enqueue(later.job);
  t.equal(await later.outcome, 'ok');
  t.ok(exec.plans.some((p) => p.reset), 'a plan reset the worker batch');
});
