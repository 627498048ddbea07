import type { GraphBuilder } from './onnx-builder.js';

/**
 * 'graph': the sampling head below ends the graph, and only a few numbers per row cross to the host.
 * 'host': the graph ends with plain `logits` [N, V] for every picked row and the host samples them
 * (src/executor/sampler.ts): the oracle the graph head is tested against, kept for bench/forward.ts.
 */
export type HeadMode = 'graph' | 'host';

/** Top-p rows fetch this many candidates; their full row is fetched too, for when the nucleus is wider. */
export const TOP_P_CANDIDATES = 256;

/**
 * The end of every architecture's graph, from `picked` [N, D] (the hidden states that need logits)
 * and the LM head [D, V]. In 'host' mode: `logits` [N, V]. In 'graph' mode, each part is driven by
 * row-index inputs that may be empty, so a step pays only for what its rows ask:
 * - `next_greedy` [N] int64: ArgMax of every row (ties: lowest index, as the host's loop).
 * - `lp_rows` [A] → `lp_lse` [A] (log-sum-exp of the raw logits), `top_values`/`top_indices`
 *   [A, k] with k = `top_count` [1] (TopK: largest first, ties by lower index, as topIndices), and
 *   `target_logprob` [A] = logits[lp_targets] − lse (score/classify rows).
 * - `sample_rows` [M], `sample_temperature` [M], `sample_uniform` [M] → `sampled` [M] int64:
 *   exact temperature sampling over the whole vocabulary, and `sample_total` [M] (Σ exp((l − max)/T),
 *   top-p's normaliser) and `sampled_logit` [M]. In float64, as the host computes them: a float32
 *   cumulative sum over 50k entries drifts by about 1e-5 of the total, enough to move a seeded draw to
 *   a neighbouring token; in float64 the draw is the host's own (the same comparisons, 1e-16 apart).
 * - `full_rows` [F] → `logits` [F, V]: rows the host still samples (logit_bias, ensemble members, top-p).
 * Plain ONNX ops (opset 20), so the WebGPU provider runs it too (it leaves float64 ops to the CPU).
 */
export function addSamplingHead(g: GraphBuilder, picked: string, lmHead: string, vocabSize: number, mode: HeadMode): void {
  const logits = g.one('MatMul', [picked, lmHead]); // [N, V]
  if (mode === 'host') {
    g.output(logits, 'logits', ['n_logits', vocabSize]);
    return;
  }
  const rows = (name: string) => g.one('Gather', [logits, g.input(name, 'int64', [name])], { axis: 0 });
  const axis1 = g.ints('head_axis_1', [1]);

  g.output(g.one('ArgMax', [logits], { axis: 1, keepdims: 0, select_last_index: 0 }), 'next_greedy', ['n_logits'], 'int64');

  const lp = rows('lp_rows'); // [A, V]
  const lse = g.one('ReduceLogSumExp', [lp, axis1], { keepdims: 0 }); // [A]
  g.output(lse, 'lp_lse', ['lp_rows']);
  const [values, indices] = g.op('TopK', [lp, g.input('top_count', 'int64', [1])], { axis: -1, largest: 1, sorted: 1 }, 2);
  g.output(values, 'top_values', ['lp_rows', 'top_count']);
  g.output(indices, 'top_indices', ['lp_rows', 'top_count'], 'int64');
  const targets = g.one('Unsqueeze', [g.input('lp_targets', 'int64', ['lp_rows']), axis1]);
  const targetLogit = g.one('Squeeze', [g.one('GatherElements', [lp, targets], { axis: 1 }), axis1]);
  g.output(g.one('Sub', [targetLogit, lse]), 'target_logprob', ['lp_rows']);

  const sampleLogits = rows('sample_rows'); // [M, V]
  const x = g.one('Cast', [sampleLogits], { to: 11 }); // float64
  const column = (name: string) => g.one('Unsqueeze', [g.input(name, 'double', ['sample_rows']), axis1]); // [M, 1]
  const max = g.one('ReduceMax', [x, axis1], { keepdims: 1 });
  const weights = g.one('Exp', [g.one('Div', [g.one('Sub', [x, max]), column('sample_temperature')])]);
  const cdf = g.one('CumSum', [weights, g.ints('head_axis_1_cumsum', [1])]); // [M, V]
  const total = g.one('Gather', [cdf, g.ints('head_last', [vocabSize - 1])], { axis: 1 }); // [M, 1]
  // The host's draw is the first token whose cumulative weight exceeds u · total: count those that do not.
  const below = g.one('Cast', [g.one('LessOrEqual', [cdf, g.one('Mul', [column('sample_uniform'), total])])], { to: 7 });
  const sampled = g.one('Min', [g.one('ReduceSum', [below, axis1], { keepdims: 0 }), g.ints('head_last_id', [vocabSize - 1])]);
  g.output(sampled, 'sampled', ['sample_rows'], 'int64');
  g.output(g.one('Squeeze', [total, axis1]), 'sample_total', ['sample_rows'], 'double');
  const sampledLogit = g.one('GatherElements', [sampleLogits, g.one('Unsqueeze', [sampled, axis1])], { axis: 1 });
  g.output(g.one('Squeeze', [sampledLogit, axis1]), 'sampled_logit', ['sample_rows']);

  g.output(rows('full_rows'), 'logits', ['full_rows', vocabSize]);
}
