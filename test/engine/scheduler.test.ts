import t from 'tap';
import type { GenerateJob, ScoreJob } from '../../src/engine/jobs.js';
import { Scheduler } from '../../src/engine/scheduler.js';
import type { StepPlan, StepResult } from '../../src/protocol.js';

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

/** What a worker would answer: one token for every decoded and prefilled row, scores of the right length. */
function fakeResult(plan: StepPlan): StepResult {
  return {
    tokens: [...plan.decode.map((d) => ({ seq: d.seq, token: 7, logprob: -1 })), ...plan.prefill.map((p) => ({ seq: p.seq, token: 7, logprob: -1 }))],
    scores: plan.score.map((s) => ({ id: s.id, logprobs: s.targets.map(() => -0.5) })),
    ms: { run: 0, total: 0 },
    kvCopiedBytes: 0,
  };
}

/** Applies a result and dispatches the events as the engine does. */
function apply(s: Scheduler, plan: StepPlan): void {
  for (const ev of s.update(fakeResult(plan))) {
    if (ev.type === 'finished') ev.job.finish(null);
    else ev.job.done(ev.logprobs, null);
  }
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
