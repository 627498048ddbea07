import { pino } from 'pino';
import t from 'tap';
import type { GenerateJob } from '../../src/engine/jobs.js';
import { Lane } from '../../src/engine/lane.js';
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

function lane(exec = new FakeExecutor()) {
  const l = new Lane(exec.asExecutor(), { maxBatchSize: 8, maxBatchTokens: 1000, maxWorkerAdapters: 8, batchWaitMs: 0 }, log, () => {});
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
