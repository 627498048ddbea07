import type { AdapterTensors, Sampling, TokenChoice } from '../protocol.js';

/** A validated generation request, as the scheduler queues it. */
export interface GenerateJob {
  type: 'generate';
  id: number;
  task: string;
  adapter: AdapterTensors | null;
  tokens: number[];
  maxTokens: number;
  sampling: Sampling;
  /** Decides, after each token, whether the sequence is done (end-of-text, stop strings, length). */
  onToken: (choice: TokenChoice) => 'continue' | 'stop' | 'length';
  finish: (error: Error | null) => void;
  cancelled: boolean;
  enqueuedAt: number;
  /** Set by the scheduler when the job joins a step. */
  admittedAt?: number;
}

/** A validated one-shot request: several rows scored in batched forward passes, no decode loop. */
export interface ScoreJob {
  type: 'score';
  id: number;
  task: string;
  adapter: AdapterTensors | null;
  rows: { context: number[]; targets: number[] }[];
  done: (logprobs: number[][] | null, error: Error | null) => void;
  cancelled: boolean;
  enqueuedAt: number;
}

export type Job = GenerateJob | ScoreJob;

/** Cost of a job's rows for the batch token budget: what the worker pads and computes. */
export function rowTokens(adapter: AdapterTensors | null, tokens: number): number {
  return tokens + (adapter?.kind === 'prompt' ? adapter.virtualTokens : 0);
}
