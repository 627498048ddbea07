import ort from 'onnxruntime-node';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { FeedContext } from '../../src/executor/model-constants.js';
import { openSessions } from '../../src/executor/sessions.js';
import { StepRunner } from '../../src/executor/step-runner.js';
import { loadBaseModel } from '../../src/model/base-model.js';
import { loadCheckpoint } from '../../src/model/checkpoint.js';
import { cachedGraphPath } from '../../src/model/graph-cache.js';
import type { EnsembleGroup, NewSequence, Sampling, StepPlan, StepResult, TokenChoice } from '../../src/protocol.js';
import { reference, ROOT } from '../helpers.js';
import { LLAMA_FIXTURES, servedCases } from '../llama/reference.js';

// The sampling head in the graph (src/model/sampling-head.ts, src/executor/head.ts) against the
// host oracle: the same checkpoint built with head 'host' (plain logits, sampler.ts), same plans.

const base: Sampling = { temperature: 0, topP: 1, topK: 0, seed: 0, logprobs: 0 };
/** Every route of the head: greedy, temperature draws (plain, top-k, top-p, both; with and without logprobs), host rows. */
const CONFIGS: Partial<Sampling>[] = [
  {},
  { logprobs: 5 },
  { chosenLogprob: true },
  { temperature: 1 },
  { temperature: 0.7, logprobs: 5 },
  { temperature: 0.8, topK: 40 },
  { temperature: 1.2, topK: 1000, logprobs: 3 },
  { temperature: 1, topP: 0.9, logprobs: 2 },
  { temperature: 0.6, topP: 0.5 },
  { temperature: 1.5, topP: 0.99 },
  { temperature: 0.9, topK: 100, topP: 0.8, chosenLogprob: true },
  { logitBias: [[11, 8]], logprobs: 2 },
  { temperature: 1, logitBias: [[262, 3]] },
];

const MODELS = [
  { name: 'gpt2', dir: join(ROOT, 'models', 'demo-gpt2'), prompts: reference.cases.filter((c) => c.adapter === null).map((c) => c.ids) },
  ...['tiny-llama', 'tiny-qwen2'].map((name) => ({ name, dir: join(LLAMA_FIXTURES, name), prompts: servedCases(name).filter((c) => c.adapter === null).map((c) => c.ids) })),
];

const empty = (): StepPlan => ({ drop: [], decode: [], prefill: [], score: [], adapters: [], forget: [] });
const close = (a: number | undefined, b: number | undefined) => a !== undefined && b !== undefined && Math.abs(a - b) <= 1e-4 * Math.max(1, Math.abs(b));

/** Runs a prefill and `steps` decode steps; every step's choices by seq. Ensemble members decode their leader's token. */
async function generate(runner: StepRunner, seqs: NewSequence[], steps: number, score: StepPlan['score'] = []): Promise<{ steps: Map<number, TokenChoice>[]; scores: StepResult['scores'] }> {
  const plan = empty();
  plan.prefill = seqs;
  plan.score = score;
  let r = await runner.step(plan);
  const out = [new Map(r.tokens.map((c) => [c.seq, c]))];
  const scores = [...r.scores].sort((a, b) => a.id - b.id);
  for (let step = 1; step <= steps; step++) {
    const last = out[out.length - 1];
    const next = empty();
    next.decode = seqs.map((s) => ({ seq: s.seq, token: last.get(s.group?.leader ?? s.seq)!.token, step }));
    r = await runner.step(next);
    out.push(new Map(r.tokens.map((c) => [c.seq, c])));
  }
  return { steps: out, scores };
}

for (const m of MODELS) {
  t.test(`${m.name}: graph head against the host oracle`, async (t) => {
    const cache = m.name === 'gpt2' ? join(ROOT, '.cache') : mkdtempSync(join(tmpdir(), 'head-graph-'));
    const model = loadBaseModel(m.dir, cache);
    const hostGraph = cachedGraphPath(loadCheckpoint(m.dir), cache, 'host').path;
    const options = { graphOptimizationLevel: 'all', intraOpNumThreads: 1 } as const;
    // The graph head as a worker runs it: base rows on the base graph.
    const { session: graphSession, base: baseGraph } = await openSessions(model, options);
    t.ok(baseGraph, 'the base graph is open');
    const hostSession = await ort.InferenceSession.create(hostGraph, options);
    t.ok(graphSession.inputNames.includes('draw_rows') && !hostSession.inputNames.includes('draw_rows'), 'one graph of each head');
    // Both heads see the same prefill layout (padded runs: the host graph has no base graph to pack on), so that their logits agree bit for bit.
    const runner = (s: ort.InferenceSession) => new StepRunner(s, new FeedContext(model.tensors), { base: s === graphSession ? baseGraph : null, packPositions: 0 });

    // Every prompt under every configuration, each with its own seed; plus a two-member ensemble per prompt.
    const seqs: NewSequence[] = [];
    m.prompts.forEach((tokens, p) => {
      CONFIGS.forEach((c, k) => {
        const seq = p * 100 + k;
        seqs.push({ seq, adapter: null, tokens, sampling: { ...base, seed: 1000 + seq, ...c } });
      });
      const leader = p * 100 + 90;
      const sampling = { ...base, temperature: 0.9, seed: 7 + p, logprobs: 3 };
      const group = (weight: number): EnsembleGroup => ({ leader, weight });
      seqs.push({ seq: leader, adapter: null, tokens, sampling, group: group(0.7) });
      seqs.push({ seq: leader + 1, adapter: null, tokens: tokens.slice(1).concat(tokens.slice(0, 1)), sampling, group: group(0.3) });
    });
    const score = m.prompts.map((tokens, id) => ({ id, adapter: null, context: tokens.slice(0, 1), targets: tokens.slice(1) }));
    const graphRunner = runner(graphSession);
    const graph = await generate(graphRunner, seqs, 6, score);
    t.same(graphRunner.runs, { base: graphRunner.runs.base, full: 0 }, 'rows without adapters ran on the base graph only');
    t.ok(graphRunner.runs.base > 6);
    const host = await generate(runner(hostSession), seqs, 6, score);

    let tokens = 0;
    let logprobs = 0;
    let bad = 0;
    graph.steps.forEach((choices, step) => {
      const want = host.steps[step];
      t.equal(choices.size, want.size, `step ${step}: one choice per row or group`);
      for (const [seq, w] of want) {
        const g = choices.get(seq);
        tokens++;
        if (!g || g.token !== w.token) {
          bad++;
          t.fail(`step ${step} seq ${seq}: token ${g?.token} vs ${w.token}`);
          continue;
        }
        if (w.logprob !== undefined) {
          logprobs++;
          if (!close(g.logprob, w.logprob)) t.fail(`step ${step} seq ${seq}: logprob ${g.logprob} vs ${w.logprob}`);
          t.same(g.top?.map((x) => x.token), w.top!.map((x) => x.token), `step ${step} seq ${seq}: top alternatives`);
          g.top?.forEach((x, i) => close(x.logprob, w.top![i].logprob) || t.fail(`step ${step} seq ${seq}: top ${i} logprob ${x.logprob} vs ${w.top![i].logprob}`));
        } else t.equal(g.logprob, undefined, 'no logprob unasked');
      }
    });
    t.equal(bad, 0, `${tokens} tokens identical, ${logprobs} log-probabilities within 1e-4`);
    t.equal(graph.scores.length, score.length);
    graph.scores.forEach((s, i) => {
      t.equal(s.logprobs.length, host.scores[i].logprobs.length);
      s.logprobs.forEach((x, j) => close(x, host.scores[i].logprobs[j]) || t.fail(`score ${i} target ${j}: ${x} vs ${host.scores[i].logprobs[j]}`));
    });
    // A seeded request gives the same tokens alone as in the mixed batch above.
    for (const k of [3, 4, 5, 6, 7, 8, 9, 10]) {
      const s = seqs.find((x) => x.seq === 100 + k) ?? seqs.find((x) => x.seq === k)!;
      const alone = await generate(runner(graphSession), [s], 6);
      t.same(
        alone.steps.map((c) => c.get(s.seq)!.token),
        graph.steps.map((c) => c.get(s.seq)!.token),
        `${JSON.stringify(CONFIGS[k])}: alone = mixed`,
      );
    }
  });
}
