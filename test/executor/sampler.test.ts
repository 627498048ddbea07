import t from 'tap';
import { drawWeighted, logSumExp, sample, topIndices, uniform, weightsOf } from '../../src/executor/sampler.js';
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

/**
 * drawWeighted's definition, done the obvious way (O(V log V)): rank by weight, largest first, ties
 * by lower id; keep the first topK; keep the shortest ranked prefix holding topP of their weight;
 * walk u × the kept mass through the kept tokens in vocabulary order.
 */
const rankings = new WeakMap<Float32Array, number[]>(); // a row's ranking, sorted once
function referenceDraw(w: Float32Array, topK: number, topP: number, u: number): number {
  if (!rankings.has(w)) rankings.set(w, Array.from(w.keys()).sort((a, b) => w[b] - w[a] || a - b));
  const ranked = rankings.get(w)!;
  let kept = ranked.slice(0, topK > 0 ? topK : w.length);
  const total = kept.reduce((a, i) => a + w[i], 0);
  if (topP < 1) {
    let mass = 0;
    const n = kept.findIndex((i) => (mass += w[i]) >= topP * total);
    kept = kept.slice(0, n < 0 ? kept.length : n + 1);
  }
  const order = kept.sort((a, b) => a - b);
  let target = u * order.reduce((a, i) => a + w[i], 0);
  for (const i of order) if ((target -= w[i]) < 0) return i;
  return order.filter((i) => w[i] > 0).at(-1)!;
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

/** The row times the factor that brings its total to `total`. */
const scaledTo = (w: Float32Array, total: number) => {
  const f = total / w.reduce((a, b) => a + b, 0);
  return w.map((x) => x * f);
};

t.test('drawWeighted draws what a full sort would: top-k, top-p, both, neither; ties, zeros, flat and peaked rows, views, edges', async (t) => {
  const rows: [string, Float32Array][] = [
    ['50k, ties', weightsOf(logits(50257, 11), 0.8)],
    ['4096, peaked', weightsOf(logits(4096, 5), 0.2)],
    ['4096, flat', weightsOf(logits(4096, 6), 8)],
    ['all equal', new Float32Array(1000).fill(0.25)],
    ['zeros', Float32Array.from({ length: 3000 }, (_, i) => (i % 3 === 0 ? 0 : uniform(9, i)))],
    ['one token', Float32Array.of(1)],
    ['two', Float32Array.of(0.5, 1)],
    // A total under 0.9: top-p alone cannot use its bound (sampler.ts drawNucleus) and takes the histogram's path.
    ['4096, peaked, total 1e-3', scaledTo(weightsOf(logits(4096, 5), 0.2), 1e-3)],
    // −0 orders below every bucket by its bits; the draw must still treat it as 0.
    ['negative zeros', Float32Array.of(1, -0, -0, 0.5, -0, 0.25)],
  ];
  const cases: [number, number][] = [[0, 1], [1, 1], [2, 1], [50, 1], [1000, 1], [2048, 1], [0, 0.9], [0, 0.3], [0, 0.999], [0, 1e-9], [200, 0.95], [1000, 0.5], [5000, 0.9], [3, 0.99], [4, 1], [5, 1], [0, 1 - 1e-5], [0, 1 - 1e-7], [0, 1 - 2 ** -53]];
  for (const [name, w] of rows) {
    for (const [topK, topP] of cases) {
      let same = 0;
      for (let seed = 1; seed <= 30; seed++) {
        const u = uniform(seed, 3);
        if (drawWeighted(w, topK, topP, u) === referenceDraw(w, topK, topP, u)) same++;
      }
      t.equal(same, 30, `${name}: top_k ${topK}, top_p ${topP}`);
    }
  }
  // Rows as the head passes them: views into a larger buffer, at an offset.
  const buffer = new Float32Array(4100);
  buffer.set(rows[1][1], 3);
  for (const [topK, topP] of cases) t.equal(drawWeighted(buffer.subarray(3, 4099), topK, topP, 0.37), referenceDraw(rows[1][1], topK, topP, 0.37), `a view at offset 3: top_k ${topK}, top_p ${topP}`);
  // Edges: a bucket's mass exactly at top-p's need; a target exactly at a running sum (runs out only below 0).
  t.equal(drawWeighted(Float32Array.of(0.5, 1), 0, 2 / 3, 0.1), 1, 'id 1 alone holds exactly 2/3');
  t.equal(drawWeighted(Float32Array.of(1, 1, 1, 1), 0, 1, 0.5), 2);
  t.equal(drawWeighted(Float32Array.of(1, 1, 1, 1), 3, 1, 2 / 3), 2);
  // u = 1 walks the whole kept mass: the last kept token that has weight.
  const ends = Float32Array.of(0.1, 0.7, 0, 0.2, 0);
  t.same([drawWeighted(ends, 0, 1, 1), drawWeighted(ends, 2, 1, 1), drawWeighted(ends, 0, 0.95, 1)], [3, 3, 3]);
  // Ids above 2^20 in the bucket that is sorted (the packed sort keys keep 21 bits of id).
  const wide = new Float32Array(2 ** 20 + 8);
  wide[7] = 0.5;
  wide[2 ** 20 + 3] = 1;
  wide[2 ** 20 + 5] = 1;
  t.equal(drawWeighted(wide, 2, 1, 0.9), 2 ** 20 + 5);
  t.equal(drawWeighted(wide, 2, 1, 0.4), 2 ** 20 + 3);
  // u close to 1 lands on the last kept token with weight, not past it.
  const w = Float32Array.of(0.1, 0.7, 0, 0.2, 0);
  t.equal(drawWeighted(w, 0, 1, 1 - 2 ** -40), 3);
  t.equal(drawWeighted(w, 2, 1, 1 - 2 ** -40), 3, 'top-2 keeps ids 1 and 3');
  t.equal(drawWeighted(w, 2, 1, 0.1), 1, 'top-2: id 0 is not kept');
  t.equal(drawWeighted(w, 0, 0.6, 0.99), 1, 'top-p 0.6 keeps id 1 alone');
});

t.test('sample: temperature rows draw from the float32 weights exp((l − max) / T)', async (t) => {
  const x = logits(5000, 4);
  for (const c of [{ topK: 0, topP: 1 }, { topK: 40, topP: 1 }, { topK: 0, topP: 0.9 }, { topK: 100, topP: 0.8 }]) {
    const s: Sampling = { temperature: 0.7, seed: 5, logprobs: 0, ...c };
    for (let step = 0; step < 10; step++) t.equal(sample(0, x, s, step).token, referenceDraw(weightsOf(x, 0.7), c.topK, c.topP, uniform(5, step)));
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

t.test('presence and frequency penalties lower the logits of generated tokens, before the choice and its logprobs', async (t) => {
  const s = { temperature: 0, topP: 1, topK: 0, seed: 1, logprobs: 2, penalties: { presence: 0.5, frequency: 1 } };
  const c = sample(7, Float32Array.of(1, 2, 3), s, 0, new Map([[2, 2]]));
  t.equal(c.token, 1, 'token 2 (3 − 2 × 1 − 0.5 = 0.5) falls below token 1');
  const lse = Math.log(Math.exp(1) + Math.exp(2) + Math.exp(0.5));
  t.ok(Math.abs(c.logprob! - (2 - lse)) < 1e-6);
  t.same(c.top!.map((x) => x.token), [1, 0]);
  t.equal(sample(7, Float32Array.of(1, 2, 3), s, 0).token, 2, 'nothing generated yet: no penalty');
});

t.test('penalties apply to seeded draws too: each draw is the one from the penalised logits', async (t) => {
  const logits = () => Float32Array.of(0, 0, 10);
  const generated = new Map([[2, 5]]); // token 2 generated five times: 10 − 5 × 2 = 0, level with the others
  let other = 0;
  for (let seed = 1; seed <= 20; seed++) {
    const s = { temperature: 1, topP: 1, topK: 0, seed, logprobs: 0, penalties: { presence: 0, frequency: 2 } };
    const expected = drawWeighted(weightsOf(Float32Array.of(0, 0, 0), 1), 0, 1, uniform(seed, 3));
    const got = sample(1, logits(), s, 3, generated).token;
    t.equal(got, expected, `seed ${seed}`);
    if (got !== 2) other++;
  }
  t.ok(other > 0, `${other} of 20 draws left token 2, which the unpenalised logits all but always give`);
});
