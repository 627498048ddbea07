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

export interface Entry {
  keep: { seq: number; adapter: AdapterTensors | null; position: number };
  segments: Segment[];
}

const MIN_HEADROOM = 64;

/**
 * The running batch's KV cache, owned by the host, as `slots` rows of `capacity` columns per layer.
 * - A decode step feeds the whole buffers (unused columns masked) and appends its new column in
 *   place at column `used`: nothing is copied between steps.
 * - A finished row frees its slot; a joining row is written into a free slot. Other rows are not
 *   touched, so continuous batching does not copy the cache whenever membership changes.
 * - Only when slots or columns run out, or half the slots are idle, is the batch compacted: each
 *   live row's valid columns are packed to the left (one copy, amortised over many steps).
 */
export class KvBatch {
  slots: (RunningRow | null)[] = [];
  layers: LayerKv[] = [];
  used = 0;
  capacity = 0;
  /** Bumped whenever a slot changes owner: per-slot feeds cached elsewhere are then stale. */
  version = 0;

  constructor(private readonly c: ModelConfig) {}

  get live(): RunningRow[] {
    return this.slots.filter((r): r is RunningRow => r !== null);
  }

  clear(): void {
    this.slots = [];
    this.layers = [];
    this.used = 0;
    this.capacity = 0;
    this.version++;
  }

  /** Frees the slots of `seqs`; compacts when more than half the slots would sit idle. Returns bytes copied. */
  remove(seqs: Set<number>): number {
    if (seqs.size === 0) return 0;
    this.slots = this.slots.map((r) => (r && seqs.has(r.seq) ? null : r));
    this.version++;
    const live = this.live.length;
    return live * 2 < this.slots.length ? this.compact([], Math.ceil(live / 4)) : 0;
  }

  /** Writes joining rows into free slots, or compacts with them when they do not fit. Returns bytes copied. */
  place(entries: Entry[]): number {
    if (entries.length === 0) return 0;
    const free = this.slots.flatMap((r, i) => (r === null ? [i] : []));
    const longest = Math.max(...entries.map(count));
    // Out of slots: compact with a quarter spare, so that the next joiners find room without a copy.
    if (free.length < entries.length || longest >= this.capacity) return this.compact(entries, Math.ceil((this.live.length + entries.length) / 4));
    if (longest > this.used) {
      // Every row's next column moves right; the columns skipped are padding for the rows already there.
      this.used = longest;
    }
    let bytes = 0;
    entries.forEach((e, k) => {
      const slot = free[k];
      bytes += this.write(this.layers, this.capacity, slot, e.segments);
      const valid = new Uint8Array(this.capacity);
      valid.fill(1, 0, count(e));
      this.slots[slot] = { ...e.keep, valid };
    });
    this.version++;
    return bytes;
  }

  /** Repacks live rows (plus `joining`) into fresh buffers: valid columns to the left, no idle slots. */
  compact(joining: Entry[], spareSlots = 0): number {
    const entries: Entry[] = [...this.live.map((r) => ({ keep: r, segments: this.segments(r) })), ...joining];
    const slots = entries.length + spareSlots;
    const used = Math.max(0, ...entries.map(count));
    const capacity = used + Math.max(MIN_HEADROOM, used);
    const { heads: H, headDim: hd, layers: L } = this.c;
    const layers: LayerKv[] = Array.from({ length: L }, () => ({
      keys: new Float32Array(slots * H * hd * capacity),
      values: new Float32Array(slots * H * capacity * hd),
    }));
    let bytes = 0;
    entries.forEach((e, slot) => (bytes += this.write(layers, capacity, slot, e.segments)));
    this.slots = entries.map((e) => {
      const valid = new Uint8Array(capacity);
      valid.fill(1, 0, count(e));
      return { seq: e.keep.seq, adapter: e.keep.adapter, position: e.keep.position, valid } as RunningRow | null;
    });
    for (let i = 0; i < spareSlots; i++) this.slots.push(null);
    this.layers = layers;
    this.used = used;
    this.capacity = capacity;
    this.version++;
    return bytes;
  }

  /** Copies segments, in order, into columns 0.. of `slot`. */
  private write(layers: LayerKv[], capacity: number, slot: number, segments: Segment[]): number {
    const { heads: H, headDim: hd } = this.c;
    let at = 0;
    for (const s of segments) {
      const n = s.to - s.from;
      layers.forEach((dst, l) => {
        const src = s.kv[l];
        for (let h = 0; h < H; h++) {
          const vSrc = ((s.row * H + h) * s.cols + s.from) * hd;
          dst.values.set(src.values.subarray(vSrc, vSrc + n * hd), ((slot * H + h) * capacity + at) * hd);
          // Keys are [hd, cols]: one short run per dim; a plain loop beats allocating a subarray for each.
          for (let d = 0; d < hd; d++) {
            const kSrc = ((s.row * H + h) * hd + d) * s.cols + s.from;
            const kDst = ((slot * H + h) * hd + d) * capacity + at;
            for (let j = 0; j < n; j++) dst.keys[kDst + j] = src.keys[kSrc + j];
          }
        }
      });
      at += n;
    }
    return at * layers.length * 2 * H * hd * 4;
  }

  /** A row's valid columns as segments of the current buffers. */
  private segments(row: RunningRow): Segment[] {
    const slot = this.slots.indexOf(row);
    const out: Segment[] = [];
    let start = -1;
    for (let j = 0; j <= this.used; j++) {
      const on = j < this.used && row.valid[j] === 1;
      if (on && start < 0) start = j;
      if (!on && start >= 0) {
        out.push({ kv: this.layers, cols: this.capacity, row: slot, from: start, to: j });
        start = -1;
      }
    }
    return out;
  }

  /** Feeds of one decode step over every slot: the whole buffers, unused columns and idle slots masked. */
  stepFeeds(): { attnBias: ort.Tensor; positions: ort.Tensor; past: Record<string, ort.Tensor> } {
    const { heads: H, headDim: hd } = this.c;
    const B = this.slots.length;
    const T = this.capacity + 1;
    const bias = new Float32Array(B * T);
    const positions = new BigInt64Array(B);
    this.slots.forEach((row, r) => {
      for (let j = 0; j < this.capacity; j++) if (!row?.valid[j]) bias[r * T + j] = NEG;
      positions[r] = BigInt(Math.min(row?.position ?? 0, this.c.nPositions - 1));
    });
    const past: Record<string, ort.Tensor> = {};
    this.layers.forEach((kv, l) => {
      past[`past_key_${l}`] = new ort.Tensor('float32', kv.keys, [B, H, hd, this.capacity]);
      past[`past_value_${l}`] = new ort.Tensor('float32', kv.values, [B, H, this.capacity, hd]);
    });
    return { attnBias: new ort.Tensor('float32', bias, [B, 1, 1, T]), positions: new ort.Tensor('int64', positions, [B, 1]), past };
  }

  /** Appends a decode step's keys [B, H, hd, 1] and values [B, H, 1, hd] at column `used`. */
  append(newKv: LayerKv[]): number {
    const { heads: H, headDim: hd } = this.c;
    const cap = this.capacity;
    const t = this.used;
    newKv.forEach((kv, l) => {
      const { keys, values } = this.layers[l];
      this.slots.forEach((row, b) => {
        if (!row) return;
        for (let h = 0; h < H; h++) {
          const bh = b * H + h;
          values.set(kv.values.subarray(bh * hd, (bh + 1) * hd), (bh * cap + t) * hd);
          for (let d = 0; d < hd; d++) keys[(bh * hd + d) * cap + t] = kv.keys[bh * hd + d];
        }
      });
    });
    for (const row of this.live) {
      row.valid[t] = 1;
      row.position += 1;
    }
    this.used += 1;
    // Out of columns: repack now, so the next step has room.
    return this.used === this.capacity ? this.compact([]) : 0;
  }
}

function count(e: Entry): number {
  return e.segments.reduce((n, s) => n + s.to - s.from, 0);
}
