import type { Registry } from '../adapters/registry.js';
import { ServerError } from '../errors.js';
import type { GenerateParams, Inference, RequestControl } from './inference.js';

export interface EnsembleClassifyParams {
  tasks: string[];
  input: string | string[];
  labels?: string[];
  prompt_template?: string;
  weights?: number[];
}

type Probabilities = Record<string, number>;

/** Softmax over the labels' summed log-probabilities: a member's belief, comparable across members. */
export function labelProbabilities(scores: Record<string, number>, labels: string[]): Probabilities {
  const max = Math.max(...labels.map((w) => scores[w]));
  const exp = labels.map((w) => Math.exp(scores[w] - max));
  const sum = exp.reduce((a, b) => a + b, 0);
  return Object.fromEntries(labels.map((w, i) => [w, exp[i] / sum]));
}

/** Weights normalised to sum 1; equal weights when none are given. */
export function normaliseWeights(n: number, weights?: number[]): number[] {
  if (!weights) return new Array(n).fill(1 / n);
  if (weights.length !== n) throw new ServerError('invalid_request', `weights has ${weights.length} entries for ${n} tasks`);
  if (weights.some((w) => !(w >= 0) || !Number.isFinite(w)) || !weights.some((w) => w > 0)) throw new ServerError('invalid_request', 'weights must be finite, non-negative and not all zero');
  // Scaled by the largest first: the sum of weights near the largest double would overflow to Infinity.
  const max = Math.max(...weights);
  const sum = weights.reduce((a, w) => a + w / max, 0);
  return weights.map((w) => w / max / sum);
}

/**
 * Prompt ensembles (Lester et al., 2021): N adapters score the same input and their label
 * distributions are averaged. The members are submitted together, so the scheduler puts their rows
 * into the same batched passes: an ensemble of N costs about one request of N times the rows.
 */
export class Ensembles {
  constructor(
    private readonly inference: Inference,
    private readonly registry: Registry,
  ) {}

  /** The labels every member scores: the request's, else the members' own, which must agree. */
  private async sharedLabels(tasks: string[], labels?: string[]): Promise<string[]> {
    if (labels) return labels;
    const specs = await Promise.all(tasks.map(async (task) => ({ task, labels: (await this.registry.resolve(task)).spec.labels })));
    const first = specs[0];
    for (const s of specs) {
      if (s.labels.length === 0) throw new ServerError('not_a_classification_task', `member '${s.task}' has no labels; pass "labels" in the request`);
      if (s.labels.length !== first.labels.length || s.labels.some((w) => !first.labels.includes(w))) {
        throw new ServerError('invalid_request', `members '${first.task}' and '${s.task}' have different labels; pass "labels" in the request`);
      }
    }
    return first.labels;
  }

  /** Generation from the weighted mean of the members' next-token distributions (see Inference.generateEnsemble). */
  generate(p: GenerateParams & { tasks: string[]; weights?: number[] }, ctl: RequestControl = {}) {
    const { tasks, weights, ...params } = p;
    return this.inference.generateEnsemble(tasks, normaliseWeights(tasks.length, weights), params, ctl);
  }

  async classify(p: EnsembleClassifyParams, ctl: RequestControl = {}) {
    const weights = normaliseWeights(p.tasks.length, p.weights);
    const labels = await this.sharedLabels(p.tasks, p.labels);
    const members = await Promise.all(p.tasks.map((task) => this.inference.classify(task, { input: p.input, labels, prompt_template: p.prompt_template }, ctl)));
    const inputs = members[0].results.length;
    const results = Array.from({ length: inputs }, (_, i) => {
      const perMember = members.map((m) => ({ task: m.task, probabilities: labelProbabilities(m.results[i].scores, labels) }));
      const probabilities: Probabilities = Object.fromEntries(labels.map((w) => [w, perMember.reduce((s, m, k) => s + weights[k] * m.probabilities[w], 0)]));
      const label = labels.reduce((best, w) => (probabilities[w] > probabilities[best] ? w : best), labels[0]);
      return { label, probabilities, members: perMember };
    });
    return { tasks: p.tasks, adapter_versions: members.map((m) => m.adapter_version), results };
  }
}
