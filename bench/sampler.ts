import { sample, uniform } from '../src/executor/sampler.js';
import type { Sampling } from '../src/protocol.js';

/**
 * Cost of choosing one token from a 50,257-entry row of logits: the sampler against the insertion
 * top-k and full-sort top-p it replaced (finding 12 of issue 10). `node dist/bench/sampler.js`.
 */
const V = 50_257;
/** Flat: uniform in [-10, 10] (a worst case for top-p). Peaked: Gaussian, sd 3, as LM logits roughly are. */
const rows = {
  flat: Float32Array.from({ length: V }, (_, i) => (uniform(42, i) - 0.5) * 20),
  peaked: Float32Array.from({ length: V }, (_, i) => 3 * Math.sqrt(-2 * Math.log(1 - uniform(7, i))) * Math.cos(2 * Math.PI * uniform(8, i))),
};

/** The former selection: insertion into a sorted list of k, O(V·k). */
function insertionTop(x: Float32Array, k: number): number[] {
  const idx: number[] = [];
  for (let i = 0; i < x.length; i++) {
    if (idx.length < k) {
      idx.push(i);
      if (idx.length === k) idx.sort((a, b) => x[b] - x[a]);
    } else if (x[i] > x[idx[k - 1]]) {
      let at = k - 1;
      while (at > 0 && x[idx[at - 1]] < x[i]) at--;
      idx.splice(at, 0, i);
      idx.pop();
    }
  }
  return idx;
}

/** The former sampler's candidate order: insertion top-k, or a sort of the whole vocabulary. */
function formerOrder(x: Float32Array, s: Sampling): number[] {
  return s.topK > 0 ? insertionTop(x, s.topK) : Array.from(x.keys()).sort((a, b) => x[b] - x[a] || a - b);
}

function time(f: (i: number) => void): number {
  const n = 20;
  f(0);
  const t0 = performance.now();
  for (let i = 1; i <= n; i++) f(i);
  return (performance.now() - t0) / n;
}

console.log('| logits | sampling | former selection ms/token | now ms/token (whole sample) |\n| --- | --- | ---: | ---: |');
for (const [name, logits] of Object.entries(rows)) {
  for (const c of [{ topK: 50 }, { topK: 1000 }, { topK: 2048 }, { topP: 0.9 }, { topK: 1000, topP: 0.9 }]) {
    const s: Sampling = { temperature: 0.8, topP: 1, topK: 0, seed: 1, logprobs: 0, ...c };
    const before = time(() => formerOrder(logits, s));
    const now = time((i) => sample(0, logits, { ...s, seed: i }, i));
    console.log(`| ${name} | ${JSON.stringify(c)} | ${before.toFixed(2)} | ${now.toFixed(2)} |`);
  }
}
