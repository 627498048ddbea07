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

/** Keys and values [rows, H, cols, hd] of one layer, in host memory (H: key/value heads): a column is hd contiguous floats. */
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

/** What the batch holds, for the scheduler's accounting and the metrics. */
export interface KvStats {
  /** Live rows: the rows a decode step computes. */
  rows: number;
  /** Allocated slots (live rows plus spare slots for joining rows, never computed). */
  slots: number;
  /** Allocated columns per slot. */
  capacity: number;
  /** Bytes of the key/value buffers. */
  bytes: number;
}

/** Columns added beyond a joining row's length, so that it decodes a while before a resize. */
const HEADROOM = 32;
/** Below this many slots, idle slots are not worth a reallocation. */
const MIN_SHRINK_SLOTS = 8;

/** Slots for `n` rows: a quarter spare, so that rows joining soon need no reallocation. */
const slotsFor = (n: number) => n + Math.ceil(n / 4);

/**
 * The running batch's KV cache, owned by the host: `slots` rows of `capacity` columns per layer.
 * Positions live in `position_ids`, not in column order, so each row simply appends its step's
 * keys/values at its own next column: a decode step copies nothing but the new column.
 * - Live rows are packed in slots [0, rows.length): a decode step feeds views of the first
 *   `rows.length` slots (the batch dimension is outermost, so they are contiguous) and computes
 *   no empty slot. A joining row takes the next slot; a leaving row's hole is filled by the last
 *   row (one row's copy per finished request).
 * - The attention bias and positions of every slot are kept between steps and updated in place:
 *   a step unmasks one column per row.
 * - Capacity grows when needed (slots by a quarter beyond the rows, columns double) and shrinks
 *   when load falls: slots when at most a quarter are live, columns when the longest row uses at
 *   most a quarter of them. Shrinking targets leave room to grow again, so it does not thrash.
 */
export class KvBatch {
  /** Live rows; rows[i] owns slot i. */
  rows: RunningRow[] = [];
  layers: LayerKv[] = [];
  slots = 0;
  capacity = 0;
  /** Bumped whenever a slot changes owner: per-slot feeds cached elsewhere are then stale. */
  version = 0;
  /** [slots, capacity + 1]: 0 where a row's column holds keys/values (and the step's own column), NEG elsewhere. */
  private bias = new Float32Array(0);
  private positions = new BigInt64Array(0);
  /** Per slot: columns [0, written) may hold keys/values (of its owner or a previous one); the rest are zero. */
  private written = new Int32Array(0);

  constructor(private readonly c: ModelConfig) {}

  get live(): RunningRow[] {
    return this.rows;
  }

  get stats(): KvStats {
    const { layers: L, kvHeads: H, headDim: hd } = this.c;
    return { rows: this.rows.length, slots: this.slots, capacity: this.capacity, bytes: this.slots * this.capacity * L * 2 * H * hd * 4 };
  }

  clear(): void {
    this.rows = [];
    this.layers = [];
    this.slots = 0;
    this.capacity = 0;
    this.bias = new Float32Array(0);
    this.positions = new BigInt64Array(0);
    this.written = new Int32Array(0);
    this.version++;
  }

  /**
   * Drops the rows of `seqs`: the last rows move into the holes, then the buffers shrink if load
   * fell far enough. Returns bytes copied.
   */
  remove(seqs: Set<number>): number {
    const leaving = this.rows.filter((r) => seqs.has(r.seq)).length;
    if (leaving === 0) return 0;
    this.version++;
    const k = this.rows.length - leaving;
    if (k === 0) {
      this.clear();
      return 0;
    }
    const holes = this.rows.flatMap((r, i) => (i < k && seqs.has(r.seq) ? [i] : []));
    const movers = this.rows.flatMap((r, i) => (i >= k && !seqs.has(r.seq) ? [i] : []));
    let bytes = 0;
    holes.forEach((to, j) => {
      bytes += this.move(movers[j], to);
      this.rows[to] = this.rows[movers[j]];
    });
    this.rows.length = k;
    // Shrink only where at most a quarter is used, and only to half or less: a copy of every row
    // must buy a real saving, and the target leaves room to grow before the next resize.
    const longest = Math.max(...this.rows.map((r) => r.count));
    const slots = k * 4 <= this.slots && this.slots > MIN_SHRINK_SLOTS ? slotsFor(k) : this.slots;
    const fewer = Math.max(longest + HEADROOM, 2 * longest);
    const cap = longest * 4 <= this.capacity && fewer * 2 <= this.capacity ? fewer : this.capacity;
    if (slots !== this.slots || cap !== this.capacity) bytes += this.resize(slots, cap);
    return bytes;
  }

  /** Writes joining rows into the next slots, adding slots or columns first when needed. Returns bytes copied. */
  place(entries: Entry[]): number {
    if (entries.length === 0) return 0;
    let bytes = 0;
    const longest = Math.max(...entries.map(count));
    const n = this.rows.length + entries.length;
    if (n > this.slots || longest >= this.capacity) {
      bytes += this.resize(n > this.slots ? slotsFor(n) : this.slots, Math.max(this.capacity, longest + HEADROOM));
    }
    for (const e of entries) {
      const slot = this.rows.length;
      bytes += this.write(slot, e.segments);
      const row = { ...e.keep, count: count(e) };
      this.clearFrom(slot, row.count);
      this.rows.push(row);
      this.fillRow(slot, row);
    }
    this.version++;
    return bytes;
  }

  /** New buffers of `slots` × `capacity`; live rows keep their slot and columns. Returns bytes copied. */
  private resize(slots: number, capacity: number): number {
    const { kvHeads: H, headDim: hd, layers: L } = this.c;
    const old = { layers: this.layers, cols: this.capacity };
    this.layers = Array.from({ length: L }, () => ({ keys: new Float32Array(slots * H * capacity * hd), values: new Float32Array(slots * H * capacity * hd) }));
    this.slots = slots;
    this.capacity = capacity;
    this.bias = new Float32Array(slots * (capacity + 1));
    this.positions = new BigInt64Array(slots);
    this.written = new Int32Array(slots);
    let bytes = 0;
    this.rows.forEach((row, r) => {
      bytes += this.write(r, [{ kv: old.layers, cols: old.cols, row: r, from: 0, to: row.count }]);
      this.written[r] = row.count;
      this.fillRow(r, row);
    });
    return bytes;
  }

  /** Slot `r`'s bias (its columns visible, the rest masked, the step's own column visible) and position. */
  private fillRow(r: number, row: RunningRow): void {
    const T = this.capacity + 1;
    this.bias.fill(0, r * T, r * T + row.count);
    this.bias.fill(NEG, r * T + row.count, r * T + this.capacity);
    this.bias[r * T + this.capacity] = 0;
    this.positions[r] = BigInt(Math.min(row.position, this.c.nPositions - 1));
  }

  /** Moves slot `from`'s used columns, bias and position into slot `to`. Returns bytes copied. */
  private move(from: number, to: number): number {
    const { kvHeads: H, headDim: hd } = this.c;
    const cap = this.capacity;
    const n = this.rows[from].count;
    for (const { keys, values } of this.layers) {
      for (let h = 0; h < H; h++) {
        const src = (from * H + h) * cap * hd;
        keys.copyWithin((to * H + h) * cap * hd, src, src + n * hd);
        values.copyWithin((to * H + h) * cap * hd, src, src + n * hd);
      }
    }
    this.clearFrom(to, n);
    const T = cap + 1;
    this.bias.copyWithin(to * T, from * T, (from + 1) * T);
    this.positions[to] = this.positions[from];
    return n * this.layers.length * 2 * H * hd * 4;
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
          const from = ((s.row * H + h) * s.cols + s.from) * hd;
          const to = ((slot * H + h) * cap + at) * hd;
          dst.keys.set(src.keys.subarray(from, from + n * hd), to);
          dst.values.set(src.values.subarray(from, from + n * hd), to);
        }
      });
      at += n;
    }
    return at * this.layers.length * 2 * H * hd * 4;
  }

  /**
   * `slot` now holds `n` columns of its owner: zeroes the columns after them that a previous owner
   * wrote. They are masked, but a mask is added to the scores: a key of Inf or NaN there (an
   * adapter with huge values gave them) would still turn this row's attention into NaN. So a
   * row's result never depends on who held its slot before.
   */
  private clearFrom(slot: number, n: number): void {
    const { kvHeads: H, headDim: hd } = this.c;
    const cap = this.capacity;
    const end = this.written[slot];
    if (end > n) {
      for (const { keys, values } of this.layers) {
        for (let h = 0; h < H; h++) {
          const row = (slot * H + h) * cap * hd;
          keys.fill(0, row + n * hd, row + end * hd);
          values.fill(0, row + n * hd, row + end * hd);
        }
      }
    }
    this.written[slot] = n;
  }

  /**
   * Feeds of one decode step over the live rows only: views of the first `rows.length` slots of
   * the kept buffers (no copy, nothing rebuilt).
   */
  stepFeeds(): { attnBias: ort.Tensor; positions: ort.Tensor; past: Record<string, ort.Tensor> } {
    const { kvHeads: H, headDim: hd } = this.c;
    const B = this.rows.length;
    const cap = this.capacity;
    const T = cap + 1;
    const past: Record<string, ort.Tensor> = {};
    this.layers.forEach((kv, l) => {
      past[`past_key_${l}`] = new ort.Tensor('float32', kv.keys.subarray(0, B * H * cap * hd), [B, H, cap, hd]);
      past[`past_value_${l}`] = new ort.Tensor('float32', kv.values.subarray(0, B * H * cap * hd), [B, H, cap, hd]);
    });
    return {
      attnBias: new ort.Tensor('float32', this.bias.subarray(0, B * T), [B, 1, 1, T]),
      positions: new ort.Tensor('int64', this.positions.subarray(0, B), [B, 1]),
      past,
    };
  }

  /** Appends a decode step's keys and values [B, H, 1, hd] (B: the live rows), each row at its own next column. */
  append(newKv: LayerKv[]): number {
    const { kvHeads: H, headDim: hd } = this.c;
    // Full: double the columns (one copy, amortised over as many steps as it adds).
    const full = this.rows.some((r) => r.count === this.capacity);
    const bytes = full ? this.resize(this.slots, Math.min(2 * this.capacity, this.c.nPositions)) : 0;
    const cap = this.capacity;
    newKv.forEach((kv, l) => {
      const { keys, values } = this.layers[l];
      this.rows.forEach((row, b) => {
        const t = row.count;
        for (let h = 0; h < H; h++) {
          const bh = b * H + h;
          keys.set(kv.keys.subarray(bh * hd, (bh + 1) * hd), (bh * cap + t) * hd);
          values.set(kv.values.subarray(bh * hd, (bh + 1) * hd), (bh * cap + t) * hd);
        }
      });
    });
    const T = cap + 1;
    this.rows.forEach((row, r) => {
      this.bias[r * T + row.count] = 0;
      row.count += 1;
      this.written[r] = Math.max(this.written[r], row.count);
      row.position += 1;
      this.positions[r] = BigInt(Math.min(row.position, this.c.nPositions - 1));
    });
    return bytes;
  }
}

function count(e: Entry): number {
  return e.segments.reduce((n, s) => n + s.to - s.from, 0);
}
