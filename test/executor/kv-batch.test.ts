import t from 'tap';
import { KvBatch, type Entry, type LayerKv } from '../../src/executor/kv-batch.js';
import type { ModelConfig } from '../../src/model/checkpoint.js';

// The cache holds key/value heads (fewer than query heads under grouped-query attention).
const c = { layers: 2, heads: 4, kvHeads: 2, headDim: 2, nPositions: 256 } as ModelConfig;
const { layers: L, kvHeads: H, headDim: hd } = c;

/** The value a row's cache holds at (layer, head, dim, column): distinct per row, so mix-ups show. */
const val = (id: number, l: number, h: number, d: number, j: number) => id * 10000 + l * 1000 + h * 100 + d * 10 + j;

/** A joining row `id` with `n` columns of known keys and values. */
function entry(id: number, n: number): Entry {
  const kv: LayerKv[] = [];
  for (let l = 0; l < L; l++) {
    const keys = new Float32Array(H * hd * n);
    const values = new Float32Array(H * n * hd);
    for (let h = 0; h < H; h++) for (let d = 0; d < hd; d++) for (let j = 0; j < n; j++) {
      keys[(h * hd + d) * n + j] = val(id, l, h, d, j);
      values[(h * n + j) * hd + d] = val(id, l, h, d, j);
    }
    kv.push({ keys, values });
  }
  return { keep: { seq: id, adapter: null, position: n }, segments: [{ kv, cols: n, row: 0, from: 0, to: n }] };
}

/** One decode step's new keys/values for every slot: row `id` gets column value val(id, ..., col). */
function step(b: KvBatch): LayerKv[] {
  const B = b.slots.length;
  return Array.from({ length: L }, (_, l) => {
    const keys = new Float32Array(B * H * hd);
    const values = new Float32Array(B * H * hd);
    b.slots.forEach((row, s) => {
      if (!row) return;
      for (let h = 0; h < H; h++) for (let d = 0; d < hd; d++) keys[(s * H + h) * hd + d] = values[(s * H + h) * hd + d] = val(row.seq, l, h, d, row.count);
    });
    return { keys, values };
  });
}

/** Checks every live row's cached columns against val(); returns the mismatches. */
function mismatches(b: KvBatch): string[] {
  const bad: string[] = [];
  const cap = b.capacity;
  b.slots.forEach((row, s) => {
    if (!row) return;
    for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) for (let d = 0; d < hd; d++) for (let j = 0; j < row.count; j++) {
      const want = val(row.seq, l, h, d, j);
      if (b.layers[l].keys[((s * H + h) * hd + d) * cap + j] !== want) bad.push(`key seq ${row.seq} l${l} h${h} d${d} col ${j}`);
      if (b.layers[l].values[((s * H + h) * cap + j) * hd + d] !== want) bad.push(`value seq ${row.seq} l${l} h${h} d${d} col ${j}`);
    }
  });
  return bad;
}

t.test('a row joins a freed slot beside live rows; the live rows are untouched', async (t) => {
  const b = new KvBatch(c);
  b.place([entry(1, 3), entry(2, 5), entry(3, 4)]);
  b.append(step(b));
  const slotOf = (seq: number) => b.slots.findIndex((r) => r?.seq === seq);
  const before = { one: slotOf(1), three: slotOf(3), two: slotOf(2) };
  b.remove(new Set([2]));
  t.equal(b.slots[before.two], null, 'the leaving row freed its slot');
  const copied = b.place([entry(4, 6)]);
  t.equal(slotOf(4), before.two, 'the joining row took the free slot');
  t.equal(slotOf(1), before.one);
  t.equal(slotOf(3), before.three);
  t.equal(copied, 6 * L * 2 * H * hd * 4, 'only the joining row was copied');
  b.append(step(b));
  t.same(mismatches(b), []);
  t.same(b.live.map((r) => [r.seq, r.count, r.position]), [[1, 5, 5], [4, 7, 7], [3, 6, 6]].sort((x, y) => slotOf(x[0]) - slotOf(y[0])));
});

t.test('capacity doubles past 32 steps, keeping every column', async (t) => {
  const b = new KvBatch(c);
  b.place([entry(1, 2), entry(2, 1)]);
  const first = b.capacity;
  t.equal(first, 2 + 32, 'the longest row plus 32 columns of headroom');
  let resized = 0;
  for (let i = 0; i < 40; i++) {
    const cap = b.capacity;
    const bytes = b.append(step(b));
    if (b.capacity !== cap) {
      resized++;
      t.equal(b.capacity, 2 * cap, 'doubled');
      t.ok(bytes > 0, 'the copy is counted');
    } else t.equal(bytes, 0, 'a plain decode step copies nothing but the new column');
  }
  t.equal(resized, 1);
  t.equal(b.live.find((r) => r.seq === 1)!.count, 42);
  t.same(mismatches(b), []);
});

t.test('step feeds: each row masks its unused columns and sits at its own position', async (t) => {
  const b = new KvBatch(c);
  b.place([entry(1, 2), entry(2, 5)]);
  const { attnBias, positions } = b.stepFeeds();
  const T = b.capacity + 1;
  const bias = attnBias.data as Float32Array;
  const slot1 = b.slots.findIndex((r) => r?.seq === 1);
  t.equal(bias[slot1 * T + 1], 0, 'a used column is visible');
  t.ok(bias[slot1 * T + 2] < -1e8, 'an unused column is masked');
  t.equal(bias[slot1 * T + b.capacity], 0, "the step's own column is visible");
  t.equal(Number((positions.data as BigInt64Array)[slot1]), 2);
});

t.test('the last row leaving clears the batch', async (t) => {
  const b = new KvBatch(c);
  b.place([entry(1, 2)]);
  b.remove(new Set([1]));
  t.equal(b.slots.length, 0);
  t.equal(b.capacity, 0);
});
