import ort from 'onnxruntime-node';
import type { ModelConfig } from '../model/checkpoint.js';
import type { AdapterTensors } from '../protocol.js';
import { NEG } from './model-constants.js';

export interface RunningRow {
  seq: number;
  adapter: AdapterTensors | null;
  /** Position id of the next token. */
  position: number;
  /** Which of the T cache columns hold this row's keys/values; the rest is padding. */
  valid: Uint8Array;
}

/**
 * The KV cache of the running batch: per layer one [B, H, T, hd] tensor for keys and one for values.
 * While the batch's membership is unchanged, each step's `present` outputs become the next `past`
 * as they are, with no copy on our side. When rows join or leave, the batch is rebuilt: every kept
 * row's valid columns are packed to the left, so padding never accumulates.
 */
export class KvBatch {
  rows: RunningRow[] = [];
  kv: ort.Tensor[] = []; // [k0, v0, k1, v1, ...]
  T = 0;

  constructor(private readonly c: ModelConfig) {}

  /** Tensors [B, H, T, hd] of a source whose row `r` is taken; `valid` marks its columns. */
  rebuild(sources: { kv: ort.Tensor[]; T: number; row: number; keep: RunningRow }[]): number {
    const { heads: H, headDim: hd, layers: L } = this.c;
    const B = sources.length;
    const counts = sources.map((s) => s.keep.valid.reduce((n, v) => n + v, 0));
    const T = Math.max(0, ...counts);
    let copied = 0;
    const kv: ort.Tensor[] = [];
    for (let i = 0; i < 2 * L; i++) {
      const out = new Float32Array(B * H * T * hd);
      sources.forEach((s, b) => {
        const src = s.kv[i].data as Float32Array;
        const cols = columnRuns(s.keep.valid);
        for (let h = 0; h < H; h++) {
          let dst = (b * H + h) * T * hd;
          const base = (s.row * H + h) * s.T * hd;
          for (const [from, to] of cols) {
            out.set(src.subarray(base + from * hd, base + to * hd), dst);
            dst += (to - from) * hd;
          }
        }
        copied += counts[b] * H * hd * 4;
      });
      kv.push(new ort.Tensor('float32', out, [B, H, T, hd]));
    }
    this.rows = sources.map((s, b) => {
      const valid = new Uint8Array(T);
      valid.fill(1, 0, counts[b]);
      return { ...s.keep, valid };
    });
    this.kv = kv;
    this.T = T;
    return copied;
  }

  /** Feeds of one decode step for all rows; `tokens` are embedded by the caller. */
  stepFeeds(): { attnBias: ort.Tensor; positions: ort.Tensor; past: Record<string, ort.Tensor> } {
    const B = this.rows.length;
    const T = this.T;
    const bias = new Float32Array(B * (T + 1));
    this.rows.forEach((row, r) => {
      for (let j = 0; j < T; j++) if (!row.valid[j]) bias[r * (T + 1) + j] = NEG;
    });
    const past: Record<string, ort.Tensor> = {};
    for (let l = 0; l < this.c.layers; l++) {
      past[`past_key_${l}`] = this.kv[2 * l];
      past[`past_value_${l}`] = this.kv[2 * l + 1];
    }
    return {
      attnBias: new ort.Tensor('float32', bias, [B, 1, 1, T + 1]),
      positions: new ort.Tensor('int64', BigInt64Array.from(this.rows.map((r) => BigInt(Math.min(r.position, this.c.nPositions - 1)))), [B, 1]),
      past,
    };
  }

  /** After a decode step: the present outputs become the cache, one column longer for every row. */
  advance(present: ort.Tensor[]): void {
    this.kv = present;
    this.T += 1;
    for (const row of this.rows) {
      const valid = new Uint8Array(this.T);
      valid.set(row.valid);
      valid[this.T - 1] = 1;
      row.valid = valid;
      row.position += 1;
    }
  }
}

/** Maximal runs [from, to) of ones in a mask. */
function columnRuns(valid: Uint8Array): [number, number][] {
  const runs: [number, number][] = [];
  let start = -1;
  for (let j = 0; j <= valid.length; j++) {
    const on = j < valid.length && valid[j] === 1;
    if (on && start < 0) start = j;
    if (!on && start >= 0) {
      runs.push([start, j]);
      start = -1;
    }
  }
  return runs;
}
