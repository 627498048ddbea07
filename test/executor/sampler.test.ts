import t from 'tap';
import { logSumExp, nucleusSize, sample, topIndices, uniform } from '../../src/executor/sampler.js';
import type { Sampling } from '../../src/protocol.js';

/** Deterministic pseudo-random logits, with deliberate ties. */
function logits(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.round((uniform(seed, i) * 20 - 10) * 8) / 8;
  return out;
}

/** The obvious definition: sort everything (largest first, ties by lower index). */
function sortedIndices(x: Float32Array): number[] {
  return Array.from(x.keys()).sort((a, b) => x[b] - x[a] || a - b);
}

/** The sampler as first written (full sort, O(V log V)): what the fast one must agree with. */
function referenceSample(x: Float32Array, sorted: number[], s: Sampling, u: number): number {
  const order = sorted.slice(0, s.topK > 0 ? s.topK : x.length);
  const max = x[order[0]];
  const probs = order.map((t) => Math.exp((x[t] - max) / s.temperature));
  const total = probs.reduce((a, b) => a + b, 0);
  let keep = probs.length;
  let mass = 0;
  for (let i = 0; i < probs.length && s.topP < 1; i++) {
    mass += probs[i] / total;
    if (mass >= s.topP) {
      keep = i + 1;
      break;
    }
  }
  let target = u * probs.slice(0, keep).reduce((a, b) => a + b, 0);
  for (let i = 0; i < keep; i++) {
    target -= probs[i];
    if (target < 0) return order[i];
  }
  return order[keep - 1];
}

t.test('topIndices: the k largest in order, ties by lower index, for every k', async (t) => {
  for (const n of [1, 7, 1000, 50257]) {
    const x = logits(n, n);
    const all = sortedIndices(x);
    for (const k of [1, 2, 20, 64, 1000, n, n + 5]) t.same(topIndices(x, k), all.slice(0, k), `n=${n} k=${k}`);
  }
  t.same(topIndices(new Float32Array([3, 3, 3, 3]), 2), [0, 1], 'all equal');
  t.same(topIndices(new Float32Array([1, 2, 3]), 0), []);
});

t.test('top-k and top-p sampling choose what a full sort would, for many seeds', async (t) => {
  const x = logits(50257, 11);
  const sorted = sortedIndices(x);
  const cases: Partial<Sampling>[] = [{ topK: 1 }, { topK: 50 }, { topK: 1000 }, { topP: 0.9 }, { topP: 0.3 }, { topK: 200, topP: 0.95 }, { topP: 0.999 }];
  for (const c of cases) {
    const s: Sampling = { temperature: 0.8, topP: 1, topK: 0, seed: 0, logprobs: 0, ...c };
    let same = 0;
    for (let seed = 1; seed <= 40; seed++) {
      const got = sample(0, x, { ...s, seed }, 3).token;
      if (got === referenceSample(x, sorted, s, uniform(seed, 3))) same++;
    }
    t.equal(same, 40, JSON.stringify(c));
  }
});

t.test('seeded sampling depends on (seed, step) alone; temperature 0 is the argmax', async (t) => {
  const x = logits(5000, 3);
  const s: Sampling = { temperature: 1, topP: 0.9, topK: 40, seed: 1234, logprobs: 0 };
  t.equal(sample(1, x, s, 5).token, sample(99, Float32Array.from(x), { ...s }, 5).token);
  t.equal(sample(0, x, { ...s, temperature: 0 }, 0).token, sortedIndices(x)[0]);
});

t.test('logprobs: the chosen token and the top alternatives, normalised', async (t) => {
  const x = logits(300, 5);
  const c = sample(0, x, { temperature: 0, topP: 1, topK: 0, seed: 1, logprobs: 3 }, 0);
  const lse = logSumExp(x);
  t.same(c.top!.map((a) => a.token), sortedIndices(x).slice(0, 3));
  t.ok(Math.abs(c.logprob! - (x[c.token] - lse)) < 1e-9);
});

t.test('nucleusSize: the shortest prefix of candidates holding p of the total', async (t) => {
  const probs = [4, 3, 2, 1];
  t.same([0.4, 0.5, 0.7, 0.71, 0.95, 1].map((p) => nucleusSize(probs, 10, p)), [1, 2, 2, 3, 4, 4]);
  // Candidates holding half of a larger total never reach p = 0.9: all of them, and the caller looks further.
  t.equal(nucleusSize(probs, 20, 0.9), 4);
});
