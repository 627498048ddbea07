import ort from 'onnxruntime-node';
import type { ModelConfig } from '../model/checkpoint.js';
import type { AdapterTensors } from '../protocol.js';
import { NEG } from './model-constants.js';

export interface RunningRow {
  seq: number;
  adapter: AdapterTensors | null;
  /** Position id of the next token. */
  position: number;
  /** Which of the cache columns hold this row's keys/values; the rest is padding. */
  valid: Uint8Array;
}

/** Keys [rows, H, hd, cols] and values [rows, H, cols, hd] of one layer, in host memory. */
export interface LayerKv {
  keys: Float32Array;
  values: Float32Array;
}

/** A run of columns [from, to) of row `row` in a KV store of `cols` columns, to copy. */
export interface Segment {
  kv: LayerKv[];
  cols: number;
  row: number;
  from: number;
  to: number;
}

const HEADROOM = 32;

/**
 * The running batch's KV cache, owned by the host. Each layer's buffer has room for `capacity`
 * columns; a decode step feeds the whole buffer (unused columns masked) and appends the step's new
 * column in place, so nothing is copied between steps. When rows join or leave, the batch is
 * rebuilt: each kept row's valid columns are packed to the left, so padding never accumulates.
 */
export class KvBatch {
  rows: RunningRow[] = [];
  layers: LayerKv[] = [];
  /** Columns in use (the next step writes column `used`) and allocated. */
  used = 0;
  capacity = 0;

  constructor(private readonly c: ModelConfig) {}

  clear(): void {
    this.rows = [];
    this.layers = [];
    this.used = 0;
    this.capacity = 0;
  }

  /** Replaces the batch with `rows`, each made of the segments of its valid columns. Returns bytes copied. */
  rebuild(rows: { keep: Omit<RunningRow, 'valid'>; segments: Segment[] }[], minCapacity = 0): number {
    const { heads: H, headDim: hd, layers: L } = this.c;
    const B = rows.length;
    const counts = rows.map((r) => r.segments.reduce((n, s) => n + s.to - s.from, 0));
    const used = Math.max(0, ...counts);
    const cap = Math.max(used + HEADROOM, minCapacity);
    const layers: LayerKv[] = [];
    for (let l = 0; l < L; l++) {
      const keys = new Float32Array(B * H * hd * cap);
      const values = new Float32Array(B * H * cap * hd);
      rows.forEach((r, b) => {
        let at = 0;
        for (const s of r.segments) {
          const n = s.to - s.from;
          const src = s.kv[l];
          for (let h = 0; h < H; h++) {
            const vSrc = ((s.row * H + h) * s.cols + s.from) * hd;
            values.set(src.values.subarray(vSrc, vSrc + n * hd), ((b * H + h) * cap + at) * hd);
            for (let d = 0; d < hd; d++) {
              const kSrc = ((s.row * H + h) * hd + d) * s.cols + s.from;
              keys.set(src.keys.subarray(kSrc, kSrc + n), ((b * H + h) * hd + d) * cap + at);
            }
          }
          at += n;
        }
      });
      layers.push({ keys, values });
    }
    this.rows = rows.map((r, b) => {
      const valid = new Uint8Array(cap);
      valid.fill(1, 0, counts[b]);
      return { seq: r.keep.seq, adapter: r.keep.adapter, position: r.keep.position, valid };
    });
    this.layers = layers;
    this.used = used;
    this.capacity = cap;
    return counts.reduce((a, b) => a + b, 0) * L * 2 * H * hd * 4;
  }

  /** This row's valid columns as segments, for a rebuild. */
  segments(row: number): Segment[] {
    const out: Segment[] = [];
    const valid = this.rows[row].valid;
    let start = -1;
    for (let j = 0; j <= this.used; j++) {
      const on = j < this.used && valid[j] === 1;
      if (on && start < 0) start = j;
      if (!on && start >= 0) {
        out.push({ kv: this.layers, cols: this.capacity, row, from: start, to: j });
        start = -1;
      }
    }
    return out;
  }

  /** Feeds of one decode step for all rows: the whole buffers, unused columns masked. */
  stepFeeds(): { attnBias: ort.Tensor; positions: ort.Tensor; past: Record<string, ort.Tensor> } {
    const { heads: H, headDim: hd } = this.c;
    const B = this.rows.length;
    const T = this.capacity + 1;
    const bias = new Float32Array(B * T);
    this.rows.forEach((row, r) => {
      for (let j = 0; j < this.capacity; j++) if (!row.valid[j]) bias[r * T + j] = NEG;
    });
    const past: Record<string, ort.Tensor> = {};
    this.layers.forEach((kv, l) => {
      past[`past_key_${l}`] = new ort.Tensor('float32', kv.keys, [B, H, hd, this.capacity]);
      past[`past_value_${l}`] = new ort.Tensor('float32', kv.values, [B, H, this.capacity, hd]);
    });
    return {
      attnBias: new ort.Tensor('float32', bias, [B, 1, 1, T]),
      positions: new ort.Tensor('int64', BigInt64Array.from(this.rows.map((r) => BigInt(Math.min(r.position, this.c.nPositions - 1)))), [B, 1]),
      past,
    };
  }

  /** Appends a decode step's keys [B, H, hd, 1] and values [B, H, 1, hd] at column `used`. */
  append(newKv: LayerKv[]): number {
    let copied = 0;
    if (this.used === this.capacity) copied += this.grow();
    const { heads: H, headDim: hd } = this.c;
    const B = this.rows.length;
    const cap = this.capacity;
    const t = this.used;
    newKv.forEach((kv, l) => {
      const { keys, values } = this.layers[l];
      for (let b = 0; b < B; b++) {
        for (let h = 0; h < H; h++) {
          const bh = b * H + h;
          values.set(kv.values.subarray(bh * hd, (bh + 1) * hd), (bh * cap + t) * hd);
          for (let d = 0; d < hd; d++) keys[(bh * hd + d) * cap + t] = kv.keys[bh * hd + d];
        }
      }
    });
    for (const row of this.rows) {
      row.valid[t] = 1;
      row.position += 1;
    }
    this.used += 1;
    return copied;
  }

  /** Doubles the column capacity: one copy, amortised over as many steps as it adds. */
  private grow(): number {
    const masks = this.rows.map((r) => r.valid.subarray(0, this.used));
    const rows = this.rows.map((r, i) => ({ keep: r, segments: [{ kv: this.layers, cols: this.capacity, row: i, from: 0, to: this.used }] }));
    const bytes = this.rebuild(rows, 2 * this.used);
    // Columns were copied as they are, padding included: the old masks still describe them.
    this.rows.forEach((r, i) => r.valid.set(masks[i]));
    return bytes;
  }
}
