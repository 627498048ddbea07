import type { EnsembleGroup, Sampling, TokenChoice } from '../protocol.js';
import { logSumExp, sample } from './sampler.js';

/** A row whose next token is to be chosen: alone, or as a member of an ensemble group. */
export interface RowLogits {
  seq: number;
  logits: Float32Array;
  sampling: Sampling;
  step: number;
  group?: EnsembleGroup;
  /** For a row with penalties: how many times it (an ensemble: its leader) has generated each token. */
  generated?: Map<number, number>;
}

/**
 * One choice per plain row, and one per ensemble group: the group's next-token distribution is the
 * weighted mean of its members' softmax distributions, and its log is sampled like a row's logits
 * (greedy, seeded temperature/top-k/top-p, logprobs), so an ensemble's token depends only on its own
 * rows and seed, never on what else shares the batch. Costs V exps per member row, paid only by
 * ensemble rows.
 */
export function chooseTokens(rows: RowLogits[]): TokenChoice[] {
  const chosen: TokenChoice[] = [];
  const groups = new Map<number, RowLogits[]>();
  for (const row of rows) {
    if (!row.group) chosen.push(sample(row.seq, row.logits, row.sampling, row.step, row.generated));
    else {
      const members = groups.get(row.group.leader) ?? [];
      members.push(row);
      groups.set(row.group.leader, members);
    }
  }
  for (const [leader, members] of groups) {
    const mixture = new Float64Array(members[0].logits.length);
    for (const m of members) {
      const lse = logSumExp(m.logits);
      const w = m.group!.weight;
      for (let i = 0; i < mixture.length; i++) mixture[i] += w * Math.exp(m.logits[i] - lse);
    }
    const lead = members.find((m) => m.seq === leader) ?? members[0];
    chosen.push(sample(leader, Float32Array.from(mixture, Math.log), lead.sampling, lead.step, lead.generated));
  }
  return chosen;
}
