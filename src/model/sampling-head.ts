import type { GraphBuilder } from './onnx-builder.js';

/**
 * 'graph': the sampling head below ends the graph, and only a few numbers per row cross to the host.
 * 'host': the graph ends with plain `logits` [N, V] for every picked row and the host samples them
 * (src/executor/sampler.ts): the oracle the graph head is tested against, kept for bench/forward.ts.
 */
export type HeadMode = 'graph' | 'host';

/**
 * The end of every architecture's graph, from `picked` [N, D] (the hidden states that need logits)
 * and the LM head [D, V]. In 'host' mode: `logits` [N, V]. In 'graph' mode, each part is driven by
 * row-index inputs that may be empty, so a step pays only for what its rows ask:
 * - `next_greedy` [N] int64: ArgMax of every row (ties: lowest index, as the host's loop).
 * - `lp_rows` [A] → `lp_lse` [A] (log-sum-exp of the raw logits), `top_values`/`top_indices`
 *   [A, k] with k = `top_count` [1] ≥ 1 (TopK: largest first, ties by lower index, as topIndices),
 *   and `target_logprob` [A] = log-softmax at `lp_targets` (score/classify rows).
 * - `draw_rows` [P], `draw_temperature` [P] → `draw_weights` [P, V]: softmax(logits / T) in float32,
 *   the weights every temperature row (top-k, top-p or neither) is drawn from on the host
 *   (src/executor/sampler.ts drawWeighted): cutting a nucleus needs the row's order, which no ONNX op
 *   gives cheaply (TopK sorts, and at k in the hundreds costs more than the forward pass's share of
 *   the row), while one vectorised softmax plus a histogram pass on the host is linear.
 * - `full_rows` [F] → `logits` [F, V]: rows the host still samples (logit_bias, ensemble members), and
 *   the raw logit of a drawn token whose log-probability is asked.
 * Plain ONNX ops (opset 20), so the WebGPU provider runs it too.
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
  // LogSoftmax is one vectorised kernel; ReduceLogSumExp calls exp one entry at a time (2× slower).
  const logProbs = g.one('LogSoftmax', [lp], { axis: -1 }); // [A, V]
  const [values, indices] = g.op('TopK', [lp, g.input('top_count', 'int64', [1])], { axis: -1, largest: 1, sorted: 1 }, 2);
  g.output(values, 'top_values', ['lp_rows', 'top_count']);
  g.output(indices, 'top_indices', ['lp_rows', 'top_count'], 'int64');
  // log-sum-exp = logit − log-probability, at the row's largest logit (no cancellation there).
  const max = (x: string) => g.one('ReduceMax', [x, axis1], { keepdims: 0 });
  g.output(g.one('Sub', [max(lp), max(logProbs)]), 'lp_lse', ['lp_rows']);
  const targets = g.one('Unsqueeze', [g.input('lp_targets', 'int64', ['lp_rows']), axis1]);
  g.output(g.one('Squeeze', [g.one('GatherElements', [logProbs, targets], { axis: 1 }), axis1]), 'target_logprob', ['lp_rows']);

  const temperature = g.one('Unsqueeze', [g.input('draw_temperature', 'float', ['draw_rows']), axis1]); // [P, 1]
  g.output(g.one('Softmax', [g.one('Div', [rows('draw_rows'), temperature])], { axis: -1 }), 'draw_weights', ['draw_rows', vocabSize]);

  g.output(rows('full_rows'), 'logits', ['full_rows', vocabSize]);
}
