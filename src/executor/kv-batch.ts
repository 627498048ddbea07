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
  /** Bytes of the key/value buffers (allocated: with the spare that lets a resize work in place). */
  bytes: number;
}

/** Capacity is a multiple of this many columns, and grows by at least this much when a row fills it. */
const COLUMN_STEP = 16;
/** Columns left beyond a joining or surviving row's length before rounding up. */
const HEADROOM = 8;
/** Below this many slots, idle slots are not worth a reallocation. */
const MIN_SHRINK_SLOTS = 8;

/** Slots for `n` rows: a quarter spare, so that rows joining soon need no reallocation. */
const slotsFor = (n: number) => n + Math.ceil(n / 4);
/** Columns for rows of which the longest holds `n`: room for a few steps, in whole COLUMN_STEPs. */
const columnsFor = (n: number) => Math.ceil((n + HEADROOM) / COLUMN_STEP) * COLUMN_STEP;
/** Columns added when a row fills `cap`: a step, or an eighth once that is more, in whole steps. */
const growthAt = (cap: number) => Math.max(COLUMN_STEP, Math.ceil(cap / 8 / COLUMN_STEP) * COLUMN_STEP);

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
 * - Every row's attention reads all `capacity` columns (the unused ones masked), so capacity
 *   follows the longest row closely: it grows by COLUMN_STEP or an eighth when a row fills it and
 *   shrinks when more than that growth, and at least 2 × COLUMN_STEP, lies beyond what the longest
 *   row needs (so a row leaving right after a growth does not undo it: past 256 columns, growth by
 *   an eighth against a fixed shrink threshold restrode every row twice per growth). Slots grow by a
 *   quarter beyond the rows and shrink when at most a quarter are live.
 *   Against doubling columns with 32 of headroom (bench/lanes.ts, 64 clients, counted ad hoc): the
 *   columns read per row fell from 1.7× to about 1.5× of those used.
 * - A resize restrides the rows in place when the buffers are large enough, rather than into new
 *   buffers: a new buffer's pages fault on first touch, which made a resize of 32 rows 5× slower
 *   than the copy alone (6 against 1 ms, ad hoc), and 20–30 ms at 40 slots × 80 columns in the
 *   64-client benchmark. So buffers grow by half again and are kept while any row runs.
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
    return { rows: this.rows.length, slots: this.slots, capacity: this.capacity, bytes: this.layers.length * 2 * (this.layers[0]?.keys.length ?? 0) * 4 };
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
    // Columns shrink once a growth's worth lies unused, since every row's attention reads them all;
    // slots where at most a quarter are live. Both in place: the memory stays until the batch empties.
    const longest = Math.max(...this.rows.map((r) => r.count));
    const slots = k * 4 <= this.slots && this.slots > MIN_SHRINK_SLOTS ? slotsFor(k) : this.slots;
    const fits = columnsFor(longest);
    const cap = this.capacity - fits >= Math.max(2 * COLUMN_STEP, growthAt(this.capacity)) ? fits : this.capacity;
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
      bytes += this.resize(n > this.slots ? slotsFor(n) : this.slots, longest >= this.capacity ? columnsFor(longest) : this.capacity);
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

  /**
   * `slots` × `capacity`; live rows keep their slot and columns. In place whenever the buffers hold
   * that: memory is given back only when the batch empties (clear), since load that fell comes
   * back. Otherwise new buffers with room to grow: half as much again (so at most 1.5× the largest
   * layout since the batch was last empty). Returns bytes copied.
   */
  private resize(slots: number, capacity: number): number {
    const { kvHeads: H, headDim: hd, layers: L } = this.c;
    const need = slots * H * capacity * hd;
    const have = this.layers.length > 0 ? this.layers[0].keys.length : 0;
    const inPlace = need <= have;
    let bytes = 0;
    const old = { slots: this.slots, cols: this.capacity, written: this.written };
    this.written = new Int32Array(slots);
    if (inPlace) {
      if (capacity !== old.cols) bytes = this.restride(old.cols, capacity);
      // Live rows' other columns are zero (restride cleared them, or they were); every other slot
      // may hold anything the buffers held before.
      this.written.fill(capacity);
      if (capacity === old.cols) this.written.set(old.written.subarray(0, Math.min(slots, old.slots)));
    } else {
      const size = need + Math.floor(need / 2);
      const from = this.layers;
      this.layers = Array.from({ length: L }, () => ({ keys: new Float32Array(size), values: new Float32Array(size) }));
      this.capacity = capacity;
      this.rows.forEach((row, r) => (bytes += this.write(r, [{ kv: from, cols: old.cols, row: r, from: 0, to: row.count }])));
    }
    this.slots = slots;
    this.capacity = capacity;
    this.bias = new Float32Array(slots * (capacity + 1));
    this.positions = new BigInt64Array(slots);
    this.rows.forEach((row, r) => {
      this.written[r] = row.count;
      this.fillRow(r, row);
    });
    return bytes;
  }

  /**
   * Moves every live row's columns from a stride of `from` columns to `to` within the same buffers,
   * zeroing each row's columns beyond its own. Growing moves the last row first and shrinking the
   * first, so that no row is overwritten before it has moved. Returns bytes copied.
   */
  private restride(from: number, to: number): number {
    const { kvHeads: H, headDim: hd } = this.c;
    const n = this.rows.length * H;
    const order = Array.from({ length: n }, (_, i) => (to > from ? n - 1 - i : i));
    for (const { keys, values } of this.layers) {
      for (const buf of [keys, values]) {
        for (const i of order) {
          const used = this.rows[Math.floor(i / H)].count * hd;
          buf.copyWithin(i * to * hd, i * from * hd, i * from * hd + used);
          buf.fill(0, i * to * hd + used, (i + 1) * to * hd);
        }
      }
    }
    return this.rows.reduce((sum, r) => sum + r.count, 0) * this.layers.length * 2 * H * hd * 4;
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
    // Full: a step more, or an eighth (in place, one copy of each row, amortised over the steps it adds).
    const full = this.rows.some((r) => r.count === this.capacity);
    // Not past the model's context where that leaves room; never less than a column more (rounding can take capacity past it).
    const grown = this.capacity + growthAt(this.capacity);
    const bytes = full ? this.resize(this.slots, Math.min(grown, Math.max(this.c.nPositions, this.capacity + COLUMN_STEP))) : 0;
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
