import type { Sampling, TokenChoice } from '../protocol.js';

/**
 * Uniform in [0, 1) from (seed, step) alone: a counter-based stream, so a seeded request draws
 * the same numbers whatever else shares its batch and whichever step order the batch runs in.
 */
export function uniform(seed: number, step: number): number {
  let h = (Math.imul(seed | 0, 0x9e3779b1) ^ Math.imul(step + 1, 0x85ebca77)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b) >>> 0;
  h = (h ^ (h >>> 16)) >>> 0;
  // Mix in the seed's high bits too, so seeds that differ only above 2^32 still differ.
  h = (h ^ Math.imul(Math.floor(seed / 2 ** 32) | 0, 0x27d4eb2d)) >>> 0;
  return h / 2 ** 32;
}

/** log(sum(exp(logits))) computed stably. */
export function logSumExp(logits: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return max + Math.log(sum);
}

function topIndices(logits: Float32Array, k: number): number[] {
  const idx: number[] = [];
  for (let i = 0; i < logits.length; i++) {
    if (idx.length < k) {
      idx.push(i);
      if (idx.length === k) idx.sort((a, b) => logits[b] - logits[a]);
    } else if (logits[i] > logits[idx[k - 1]]) {
      let at = k - 1;
      while (at > 0 && logits[idx[at - 1]] < logits[i]) at--;
      idx.splice(at, 0, i);
      idx.pop();
    }
  }
  return idx.sort((a, b) => logits[b] - logits[a] || a - b);
}

/** Chooses the next token from one row of logits; the log-probabilities reported are before temperature. */
export function sample(seq: number, logits: Float32Array, s: Sampling, step: number): TokenChoice {
  let token: number;
  if (s.temperature === 0) {
    token = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[token]) token = i;
  } else {
    token = sampleTemperature(logits, s, uniform(s.seed, step));
  }
  const choice: TokenChoice = { seq, token };
  // log-softmax costs an exp per vocabulary entry: paid only by requests that ask for logprobs.
  if (s.logprobs > 0) {
    const lse = logSumExp(logits);
    choice.logprob = logits[token] - lse;
    choice.top = topIndices(logits, s.logprobs).map((t) => ({ token: t, logprob: logits[t] - lse }));
  }
  return choice;
}

function sampleTemperature(logits: Float32Array, s: Sampling, u: number): number {
  if (s.topK === 0 && s.topP >= 1) return sampleFull(logits, s.temperature, u);
  // Candidates sorted by probability; top-k then top-p cut the tail before renormalising.
  const k = s.topK > 0 ? Math.min(s.topK, logits.length) : logits.length;
  const order = k < logits.length ? topIndices(logits, k) : Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b);
  const max = logits[order[0]];
  const probs = order.map((t) => Math.exp((logits[t] - max) / s.temperature));
  const total = probs.reduce((a, b) => a + b, 0);
  let keep = probs.length;
  if (s.topP < 1) {
    let mass = 0;
    for (let i = 0; i < probs.length; i++) {
      mass += probs[i] / total;
      if (mass >= s.topP) {
        keep = i + 1;
        break;
      }
    }
  }
  const kept = probs.slice(0, keep).reduce((a, b) => a + b, 0);
  let target = u * kept;
  for (let i = 0; i < keep; i++) {
    target -= probs[i];
    if (target < 0) return order[i];
  }
  return order[keep - 1];
}

/** Plain temperature sampling: no order is needed, so no sort. */
function sampleFull(logits: Float32Array, temperature: number, u: number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  const probs = new Float64Array(logits.length);
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += probs[i] = Math.exp((logits[i] - max) / temperature);
  let target = u * total;
  for (let i = 0; i < logits.length; i++) {
    target -= probs[i];
    if (target < 0) return i;
  }
  return logits.length - 1;
}
