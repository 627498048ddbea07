/**
 * The data that crosses seams: HTTP → engine (ValidRequest), engine → worker (StepPlan),
 * worker → engine (StepResult). Plain, serialisable objects: they go through postMessage.
 */

/** An adapter as the worker applies it. Arrays live in SharedArrayBuffers, so posting them copies nothing. */
export interface AdapterTensors {
  /** Unique per content version: the worker caches tensors under it. */
  key: string;
  kind: 'prompt' | 'prefix' | 'bitfit' | 'lora' | 'ia3';
  /** Soft-prompt rows (prompt) or key/value prefix length (prefix); 0 for the other kinds. */
  virtualTokens: number;
  /** prompt: [n, D] embeddings put before the tokens. prefix: [n, L*2*D] as PEFT saves it. */
  embeddings?: Float32Array;
  /** bitfit: every bias vector of the model (base values where the adapter names none), by HF name. */
  biases?: Record<string, Float32Array>;
  /**
   * lora: per targeted module (HF module path), A [in, r] (PEFT's lora_A transposed) and B [r, out]
   * with the scale folded in; r is the module's own rank (PEFT's rank_pattern), `rank` the largest.
   */
  lora?: { rank: number; modules: Record<string, { a: Float32Array; b: Float32Array }> };
  /** ia3: per targeted module, the vector that scales its input (PEFT's feedforward modules) or its output. */
  ia3?: Record<string, { side: 'in' | 'out'; scale: Float32Array }>;
}

/** Bytes an adapter's decoded tensors hold: what the registry's LRU budget and a worker's share of it count. */
export function tensorBytes(a: AdapterTensors): number {
  let n = (a.embeddings?.byteLength ?? 0) + Object.values(a.biases ?? {}).reduce((s, b) => s + b.byteLength, 0);
  for (const f of Object.values(a.lora?.modules ?? {})) n += f.a.byteLength + f.b.byteLength;
  for (const v of Object.values(a.ia3 ?? {})) n += v.scale.byteLength;
  return n;
}

export interface Sampling {
  temperature: number; // 0: greedy
  topP: number;
  topK: number; // 0: off
  seed: number; // every request has one: the engine draws it when the client gives none
  logprobs: number; // 0..20 top alternatives to report
  /** Report the chosen token's log-probability even with no alternatives (OpenAI's logprobs: 0). */
  chosenLogprob?: boolean;
  /** Additive biases of a few token ids (OpenAI's logit_bias), applied before sampling and logprobs. */
  logitBias?: [number, number][];
  /**
   * OpenAI's presence and frequency penalties: before sampling and logprobs, each token's logit less
   * `frequency` times the count of that token among those the row has generated, and less
   * `presence` if it has generated it at all. Absent: both 0.
   */
  penalties?: { presence: number; frequency: number };
}

/** A row that joins the running batch: prefill its prompt, then decode one token per step. */
export interface NewSequence {
  seq: number;
  adapter: string | null;
  tokens: number[];
  sampling: Sampling;
  /** A member of a prompt ensemble: its rows share one token per step, chosen for the leader. */
  group?: EnsembleGroup;
}

/** Every member row of an ensemble names the leader row (whose seq the chosen token is reported under) and its weight. */
export interface EnsembleGroup {
  leader: number;
  weight: number;
}

/** A one-shot row (score, classify): log-probabilities of `targets` after `context`, no KV kept. */
export interface ScoreRow {
  id: number;
  adapter: string | null;
  context: number[];
  targets: number[];
}

export interface DecodeRow {
  seq: number;
  token?: number;
  /** Tokens the sequence has produced before this step: the seeded draw's index. */
  step?: number;
}

export interface StepPlan {
  /** Clear the worker's running batch first: the scheduler lost track of it after a failed step. */
  reset?: boolean;
  /** Sequences to remove from the batch before this step (finished, cancelled). */
  drop: number[];
  /**
   * Running sequences to decode. Order is free. The worker feeds each the token it chose for it last
   * (and counts its steps), so the engine can plan the next step before this one's result is back;
   * `token`/`step` override that (tests and benchmarks feeding their own tokens).
   */
  decode: DecodeRow[];
  prefill: NewSequence[];
  score: ScoreRow[];
  /** Adapter tensors the worker has not seen yet. */
  adapters: AdapterTensors[];
  /** Adapter keys the worker may free. */
  forget: string[];
}

/**
 * Whether a new row with `ownTokens` tokens of its own (a prompt, or a score row's context) starts
 * after its adapter's cached past. A soft-prompt row with none feeds its soft prompt again: the soft
 * prompt's last position predicts the row's first token, and the cache keeps no logits.
 */
export function startsAfterPast(adapter: { kind: string } | null, ownTokens: number): boolean {
  return ownTokens > 0 || adapter?.kind !== 'prompt';
}

export interface TokenChoice {
  seq: number;
  token: number;
  /** Only when the request asked for logprobs. */
  logprob?: number;
  top?: { token: number; logprob: number }[];
}

export interface StepResult {
  tokens: TokenChoice[];
  scores: { id: number; logprobs: number[] }[];
  /** Timing of the step inside the worker, for metrics and benchmarks. */
  ms: { run: number; total: number };
  /** KV cache bytes copied in this step (rows written into slots, buffers resized). */
  kvCopiedBytes: number;
  /** New rows of a soft-prompt adapter whose KV was held before the step (hits) or computed in it (misses). */
  promptKv?: { hits: number; misses: number };
  /** Padding positions the step's prefill computed (rows × padded length − real lengths). */
  paddedTokens?: number;
  /** The worker's KV batch after the step: live rows, allocated slots and columns, buffer bytes. */
  kv?: { rows: number; slots: number; capacity: number; bytes: number };
  /** The adapters the worker holds after the step, their bytes (tensorBytes), and the full collections it has run to free forgotten ones (src/executor/reclaim.ts). */
  adapters?: { held: number; bytes: number; collections?: number };
  /**
   * New rows (prefill seq or score id) the worker refused before running the step: each fails its
   * own request; the rest of the batch ran. `invalid_adapter`: the row's adapter tensors cannot run.
   */
  rejected?: RejectedRow[];
}

export interface RejectedRow {
  row: number;
  code: 'invalid_adapter' | 'invalid_row';
  reason: string;
}
