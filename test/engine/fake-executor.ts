import { EventEmitter } from 'node:events';
import type { Executor } from '../../src/executor/executor.js';
import type { StepPlan, StepResult } from '../../src/protocol.js';

/** What a worker would answer: one token for every decoded and prefilled row, scores of the right length. */
export function fakeResult(plan: StepPlan): StepResult {
  return {
    tokens: [...plan.decode.map((d) => ({ seq: d.seq, token: 7, logprob: -1 })), ...plan.prefill.map((p) => ({ seq: p.seq, token: 7, logprob: -1 }))],
    scores: plan.score.map((s) => ({ id: s.id, logprobs: s.targets.map(() => -0.5) })),
    ms: { run: 0, total: 0 },
    kvCopiedBytes: 0,
  };
}

/**
 * An executor without a worker, for engine and lane tests: answers each plan with fakeResult, or
 * with what `next` says (a result to tweak, or an error to throw).
 */
export class FakeExecutor extends EventEmitter {
  canRun = true;
  plans: StepPlan[] = [];
  next: ((plan: StepPlan) => StepResult) | null = null;

  async step(plan: StepPlan): Promise<StepResult> {
    this.plans.push(plan);
    await new Promise((r) => setImmediate(r));
    const answer = this.next ?? fakeResult;
    this.next = null;
    return answer(plan);
  }

  asExecutor(): Executor {
    return this as unknown as Executor;
  }
}
