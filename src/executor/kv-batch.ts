import ort from 'onnxruntime-node';
import type { ModelConfig } from '../model/checkpoint.js';
import type { AdapterTensors } from '../protocol.js';
import { NEG } from './model-constants.js';

export interface RunningRow {
  seq: number;
  adapter: AdapterTensors | null;
  /** Position id of the next token. */
  position: number;
  /** Cache columns [0, count) hold this row's keys/values; the rest of its slot is unused. */
  count: number;
}

/** Keys [rows, H, hd, cols] and values [rows, H, cols, hd] of one layer, in host memory (H: key/value heads). */
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

const HEADROOM = 32;

/**
 * The running batch's KV cache, owned by the host: `slots` rows of `capacity` columns per layer.
 * Positions live in `position_ids`, not in column order, so each row simply appends its step's
 * keys/values at its own next column: a decode step copies nothing but the new column.
 * - A joining row is written into a free slot; a leaving row frees its slot. Other rows are untouched.
 * - Buffers are reallocated only to add slots or columns (capacity doubles), or to drop idle slots
 *   when three quarters sit empty.
 */
export class KvBatch {
  slots: (RunningRow | null)[] = [];
  layers: LayerKv[] = [];
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
    this.capacity = 0;
    this.version++;
  }

  /** Frees the slots of `seqs`; repacks only a batch left three-quarters idle. Returns bytes copied. */
  remove(seqs: Set<number>): number {
    if (seqs.size === 0) return 0;
    this.slots = this.slots.map((r) => (r && seqs.has(r.seq) ? null : r));
    this.version++;
    const live = this.live.length;
    if (live === 0) {
      this.clear();
      return 0;
    }
    return live * 4 < this.slots.length && this.slots.length > 8 ? this.resize(Math.ceil(live * 1.25), this.capacity, true) : 0;
  }

  /** Writes joining rows into free slots, adding slots or columns first when needed. Returns bytes copied. */
  place(entries: Entry[]): number {
    if (entries.length === 0) return 0;
    let bytes = 0;
    const longest = Math.max(...entries.map(count));
    let free = this.freeSlots();
    if (free.length < entries.length || longest >= this.capacity) {
      const slots = this.slots.length + Math.max(0, entries.length - free.length + Math.ceil((this.live.length + entries.length) / 4));
      bytes += this.resize(slots, Math.max(this.capacity, longest + HEADROOM), false);
      free = this.freeSlots();
    }
    entries.forEach((e, k) => {
      bytes += this.write(free[k], e.segments);
      this.slots[free[k]] = { ...e.keep, count: count(e) };
    });
    this.version++;
    return bytes;
  }

  private freeSlots(): number[] {
    return this.slots.flatMap((r, i) => (r === null ? [i] : []));
  }

  /**
   * New buffers of `slots` × `capacity`. Live rows keep their columns; `pack` also moves them to the
   * first slots (dropping idle ones), else every row keeps its slot index.
   */
  private resize(slots: number, capacity: number, pack: boolean): number {
    const { kvHeads: H, headDim: hd } = this.c;
    const old = { layers: this.layers, cols: this.capacity };
    const moves = this.slots.flatMap((r, i) => (r ? [{ row: r, from: i }] : []));
    const next: (RunningRow | null)[] = pack ? moves.map((m) => m.row) : [...this.slots];
    while (next.length < slots) next.push(null);
    this.layers = this.layers.length
      ? this.layers.map(() => ({ keys: new Float32Array(slots * H * hd * capacity), values: new Float32Array(slots * H * capacity * hd) }))
      : Array.from({ length: this.c.layers }, () => ({ keys: new Float32Array(slots * H * hd * capacity), values: new Float32Array(slots * H * capacity * hd) }));
    this.slots = next;
    this.capacity = capacity;
    let bytes = 0;
    moves.forEach((m, k) => {
      bytes += this.write(pack ? k : m.from, [{ kv: old.layers, cols: old.cols, row: m.from, from: 0, to: m.row.count }]);
    });
    this.version++;
    return bytes;
  }

  /** Copies segments, in order, into columns 0.. of `slot`. */
  private write(slot: number, segments: Segment[]): number {
    const { kvHeads: H, headDim: hd } = this.c;
    const cap = this.capacity;
    let at = 0;
    for (const s of segments) {
      const n = s.to - s.from;
      this.layers.forEach((dst, l) => {
        const src = s.kv[l];
        for (let h = 0; h < H; h++) {
          const vSrc = ((s.row * H + h) * s.cols + s.from) * hd;
          dst.values.set(src.values.subarray(vSrc, vSrc + n * hd), ((slot * H + h) * cap + at) * hd);
          // Keys are [hd, cols]: one short run per dim; a plain loop beats allocating a subarray for each.
          for (let d = 0; d < hd; d++) {
            const kSrc = ((s.row * H + h) * hd + d) * s.cols + s.from;
            const kDst = ((slot * H + h) * hd + d) * cap + at;
            for (let j = 0; j < n; j++) dst.keys[kDst + j] = src.keys[kSrc + j];
          }
        }
      });
      at += n;
    }
    return at * this.layers.length * 2 * H * hd * 4;
  }

  /** Feeds of one decode step over every slot: the whole buffers, each row's unused columns masked. */
  stepFeeds(): { attnBias: ort.Tensor; positions: ort.Tensor; past: Record<string, ort.Tensor> } {
    const { kvHeads: H, headDim: hd } = this.c;
    const B = this.slots.length;
    const T = this.capacity + 1;
    const bias = new Float32Array(B * T);
    const positions = new BigInt64Array(B);
    this.slots.forEach((row, r) => {
      bias.fill(NEG, r * T + (row?.count ?? 0), r * T + this.capacity);
      positions[r] = BigInt(Math.min(row?.position ?? 0, this.c.nPositions - 1));
    });
    const past: Record<string, ort.Tensor> = {};
    this.layers.forEach((kv, l) => {
      past[`past_key_${l}`] = new ort.Tensor('float32', kv.keys, [B, H, hd, this.capacity]);
      past[`past_value_${l}`] = new ort.Tensor('float32', kv.values, [B, H, this.capacity, hd]);
    });
    return { attnBias: new ort.Tensor('float32', bias, [B, 1, 1, T]), positions: new ort.Tensor('int64', positions, [B, 1]), past };
  }

  /** Appends a decode step's keys [B, H, hd, 1] and values [B, H, 1, hd], each row at its own next column. */
  append(newKv: LayerKv[]): number {
    const { kvHeads: H, headDim: hd } = this.c;
    // Full: double the columns (one copy, amortised over as many steps as it adds).
    const full = this.live.some((r) => r.count === this.capacity);
    const bytes = full ? this.resize(this.slots.length, Math.min(2 * this.capacity, this.c.nPositions), false) : 0;
    const cap = this.capacity;
    newKv.forEach((kv, l) => {
      const { keys, values } = this.layers[l];
      this.slots.forEach((row, b) => {
        if (!row) return;
        const t = row.count;
        for (let h = 0; h < H; h++) {
          const bh = b * H + h;
          values.set(kv.values.subarray(bh * hd, (bh + 1) * hd), (bh * cap + t) * hd);
          for (let d = 0; d < hd; d++) keys[(bh * hd + d) * cap + t] = kv.keys[bh * hd + d];
        }
      });
    });
    for (const row of this.live) {
      row.count += 1;
      row.position += 1;
    }
    return bytes;
  }
}

function count(e: Entry): number {
  return e.segments.reduce((n, s) => n + s.to - s.from, 0);
}
