import { biasNames, type ModelConfig } from '../model/checkpoint.js';
import type { AdapterTensors, RejectedRow, StepPlan } from '../protocol.js';

/**
 * The worker's check of every new row before session.run: a row whose adapter is unknown or
 * malformed, whose token ids are out of the vocabulary, or that does not fit the context is taken
 * out of the plan and reported, so that it fails its own request and the rest of the batch runs.
 * It mirrors the adapters the worker holds (plan.adapters in, plan.forget out). The engine plans
 * one step ahead, so the step after a refusal may still decode the refused row: it is left out.
 */
export class RowCheck {
  private readonly adapters = new Map<string, AdapterTensors>();
  private readonly broken = new Map<string, string>();
  private readonly biases: { name: string; size: number }[];
  /** Rows refused by the previous plan: the plan after it, made before the refusal was known, may name them in decode. */
  private refused = new Set<number>();

  constructor(private readonly c: ModelConfig) {
    this.biases = biasNames(c);
  }

  /** The plan without the rows that cannot run, and those rows. */
  filter(plan: StepPlan): { plan: StepPlan; rejected: RejectedRow[] } {
    const rejected: RejectedRow[] = [];
    const adapters: AdapterTensors[] = [];
    if (plan.reset) {
      this.adapters.clear();
      this.broken.clear();
    }
    for (const a of plan.adapters) {
      const why = this.adapterProblem(a);
      if (why) this.broken.set(String(a.key), why);
      else {
        this.broken.delete(a.key);
        this.adapters.set(a.key, a);
        adapters.push(a);
      }
    }
    const check = (row: number, key: string | null, tokens: number[][], positions: number): boolean => {
      const adapterWhy = key === null ? null : this.broken.get(key) ?? (this.adapters.has(key) ? null : `adapter ${key} was never sent to the worker`);
      if (adapterWhy) {
        rejected.push({ row, code: 'invalid_adapter', reason: adapterWhy });
        return false;
      }
      const a = key === null ? null : this.adapters.get(key)!;
      // A soft prompt predicts its row's first token: such a row may have no tokens of its own.
      const why = this.tokensProblem(tokens, positions + (a && a.kind !== 'bitfit' ? a.virtualTokens : 0), a?.kind === 'prompt');
      if (why) rejected.push({ row, code: 'invalid_row', reason: why });
      return why === null;
    };
    const prefill = plan.prefill.filter((s) => check(s.seq, s.adapter, [s.tokens], s.tokens?.length ?? 0));
    const score = plan.score.filter((s) => check(s.id, s.adapter, [s.context, s.targets], (s.context?.length ?? 0) + (s.targets?.length ?? 0)) && s.targets.length > 0);
    for (const s of plan.score) if (s.targets?.length === 0 && !rejected.some((r) => r.row === s.id)) rejected.push({ row: s.id, code: 'invalid_row', reason: 'a score row has no target tokens' });
    for (const key of plan.forget) {
      this.adapters.delete(key);
      this.broken.delete(key);
    }
    const decode = this.refused.size === 0 ? plan.decode : plan.decode.filter((d) => !this.refused.has(d.seq));
    this.refused = new Set(rejected.map((r) => r.row));
    return { plan: { ...plan, adapters, decode, prefill, score }, rejected };
  }

  private tokensProblem(parts: number[][], positions: number, softPrompt: boolean): string | null {
    const V = this.c.vocabSize;
    for (const ids of parts) {
      if (!Array.isArray(ids)) return 'token ids are not an array';
      for (const id of ids) if (!Number.isInteger(id) || id < 0 || id >= V) return `token id ${id} is outside the vocabulary (0..${V - 1})`;
    }
    if (parts[0].length === 0 && parts.length === 1 && !softPrompt) return 'a row has no tokens';
    if (positions > this.c.nPositions) return `the row needs ${positions} positions; the context has ${this.c.nPositions}`;
    return null;
  }

  /** Shapes of the kinds this worker knows; other kinds are left to the runner. */
  private adapterProblem(a: AdapterTensors): string | null {
    if (typeof a.key !== 'string' || typeof a.kind !== 'string') return 'the adapter has no key or kind';
    const { hidden: D, layers: L, kvHeads, headDim } = this.c;
    const n = a.virtualTokens;
    if (a.kind === 'prompt' || a.kind === 'prefix') {
      if (!Number.isInteger(n) || n < 1 || n > this.c.nPositions) return `${n} virtual tokens`;
      // A prefix holds keys and values per layer, sized by the key/value heads (PEFT's grouped-query layout).
      const width = a.kind === 'prompt' ? D : L * 2 * kvHeads * headDim;
      if (!(a.embeddings instanceof Float32Array) || a.embeddings.length !== n * width) return `${a.kind} embeddings are not [${n}, ${width}] float32`;
    } else if (a.kind === 'bitfit') {
      for (const { name, size } of this.biases) {
        const b = a.biases && Object.hasOwn(a.biases, name) ? a.biases[name] : undefined;
        if (!(b instanceof Float32Array) || b.length !== size) return `bias ${name} is not ${size} float32 values`;
      }
    }
    return null;
  }
}
