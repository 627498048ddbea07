import { startsAfterPast, type AdapterTensors, type Sampling, type TokenChoice } from '../protocol.js';

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
  /**
   * A prompt ensemble: one row per member (its own adapter and prompt tokens), all admitted together;
   * each step picks one token for the whole group from the weighted mean of their distributions.
   */
  members?: EnsembleMember[];
  /** Set by the scheduler when the job joins a step. */
  admittedAt?: number;
}

export interface EnsembleMember {
  adapter: AdapterTensors | null;
  tokens: number[];
  /** Normalised: the members' weights sum to 1. */
  weight: number;
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

/** Tokens a row feeds the model: its own and, for prompt tuning, its soft prompt's (MAX_SCORE_TOKENS counts these). */
export function rowTokens(adapter: AdapterTensors | null, tokens: number): number {
  return tokens + (adapter?.kind === 'prompt' ? adapter.virtualTokens : 0);
}

/**
 * A row's width in its step's prefill run, which the worker pads to that run's widest row: the
 * step's token budget (prefill-budget.ts) counts this. With the soft-prompt KV cache (`softPromptCached`) a prompt-tuning row starts
 * after its soft prompt's keys/values, computed once per adapter version in a run of their own, so
 * only its own tokens are fed; otherwise, or when it has none (startsAfterPast), its soft prompt is fed with it.
 */
export function prefillWidth(adapter: AdapterTensors | null, tokens: number, softPromptCached: boolean): number {
  return softPromptCached && startsAfterPast(adapter, tokens) ? tokens : rowTokens(adapter, tokens);
}
