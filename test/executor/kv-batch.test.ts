import t from 'tap';
import { KvBatch, type Entry, type LayerKv } from '../../src/executor/kv-batch.js';
import type { ModelConfig } from '../../src/model/checkpoint.js';

// The cache holds key/value heads (fewer than query heads under grouped-query attention).
const c = { layers: 2, heads: 4, kvHeads: 2, headDim: 2, nPositions: 256 } as ModelConfig;
const { layers: L, kvHeads: H, headDim: hd } = c;

/** The key a row's cache holds at (layer, head, dim, column): distinct per row, so mix-ups show; its value is the negative. */
const val = (id: number, l: number, h: number, d: number, j: number) => id * 10000 + l * 1000 + h * 100 + d * 10 + j;

/** A joining row `id` with `n` columns of known keys and values. */
function entry(id: number, n: number): Entry {
  const kv: LayerKv[] = [];
  for (let l = 0; l < L; l++) {
    const keys = new Float32Array(H * n * hd);
    const values = new Float32Array(H * n * hd);
    for (let h = 0; h < H; h++) for (let d = 0; d < hd; d++) for (let j = 0; j < n; j++) {
      keys[(h * n + j) * hd + d] = val(id, l, h, d, j);
      values[(h * n + j) * hd + d] = -val(id, l, h, d, j);
    }
    kv.push({ keys, values });
  }
  return { keep: { seq: id, adapter: null, position: n }, segments: [{ kv, cols: n, row: 0, from: 0, to: n }] };
}

/** One decode step's new keys/values for the live rows (what the graph returns): row `id` gets val(id, ..., col). */
function step(b: KvBatch): LayerKv[] {
  const B = b.rows.length;
  return Array.from({ length: L }, (_, l) => {
    const keys = new Float32Array(B * H * hd);
    const values = new Float32Array(B * H * hd);
    b.rows.forEach((row, s) => {
      for (let h = 0; h < H; h++) {
        for (let d = 0; d < hd; d++) {
          keys[(s * H + h) * hd + d] = val(row.seq, l, h, d, row.count);
          values[(s * H + h) * hd + d] = -val(row.seq, l, h, d, row.count);
        }
      }
    });
    return { keys, values };
  });
}

/** Checks every live row's cached columns against val(); returns the mismatches. */
function mismatches(b: KvBatch): string[] {
  const bad: string[] = [];
  const cap = b.capacity;
  b.rows.forEach((row, s) => {
    for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) for (let d = 0; d < hd; d++) for (let j = 0; j < row.count; j++) {
      const want = val(row.seq, l, h, d, j);
      if (b.layers[l].keys[((s * H + h) * cap + j) * hd + d] !== want) bad.push(`key seq ${row.seq} l${l} h${h} d${d} col ${j}`);
      if (b.layers[l].values[((s * H + h) * cap + j) * hd + d] !== -want) bad.push(`value seq ${row.seq} l${l} h${h} d${d} col ${j}`);
    }
  });
  return bad;
}

/** Checks the kept bias and positions of every live row against what they must be, computed afresh. */
function feedMismatches(b: KvBatch): string[] {
  const { attnBias, positions } = b.stepFeeds();
  const T = b.capacity + 1;
  const bias = attnBias.data as Float32Array;
  const pos = positions.data as BigInt64Array;
  const bad: string[] = [];
  b.rows.forEach((row, r) => {
    for (let j = 0; j < T; j++) {
      const want = j < row.count || j === b.capacity ? 0 : -1e9;
      if (bias[r * T + j] !== Math.fround(want)) bad.push(`bias seq ${row.seq} col ${j}: ${bias[r * T + j]}`);
    }
    if (Number(pos[r]) !== row.position) bad.push(`position seq ${row.seq}: ${pos[r]} != ${row.position}`);
  });
  return bad;
}

const rowBytes = (n: number) => n * L * 2 * H * hd * 4;
const seqs = (b: KvBatch) => b.rows.map((r) => r.seq);

t.test('a row leaving from the middle: the last row moves into its slot, KV and position intact', async (t) => {
  const b = new KvBatch(c);
  b.place([entry(1, 3), entry(2, 5), entry(3, 4), entry(4, 6)]);
  b.append(step(b));
  t.same(seqs(b), [1, 2, 3, 4], 'joining rows take the next slots in order');
  const version = b.version;
  const copied = b.remove(new Set([2]));
  t.same(seqs(b), [1, 4, 3], 'the last row took the hole');
  t.equal(copied, rowBytes(7), "one row's used columns were copied, nothing else");
  t.ok(b.version > version, 'slot owners changed: cached per-slot feeds are stale');
  t.same(mismatches(b), []);
  t.same(feedMismatches(b), []);
  b.append(step(b));
  t.same(mismatches(b), [], 'the moved row appends at its own next column');
  t.same(b.rows.map((r) => [r.seq, r.count, r.position]), [[1, 5, 5], [4, 8, 8], [3, 6, 6]]);
  t.same(feedMismatches(b), []);
});

t.test('several rows leave at once: survivors fill the holes, the last rows leaving copy nothing', async (t) => {
  const b = new KvBatch(c);
  b.place([1, 2, 3, 4, 5, 6].map((id) => entry(id, id)));
  t.equal(b.remove(new Set([5, 6])), 0, 'rows leaving from the end move nothing');
  t.same(seqs(b), [1, 2, 3, 4]);
  const copied = b.remove(new Set([1, 3]));
  t.same(seqs(b).sort(), [2, 4]);
  t.equal(copied, rowBytes(4), 'only row 4 moved (into slot 0)');
  t.same(mismatches(b), []);
  t.same(feedMismatches(b), []);
});

t.test('decode feeds cover only the live rows, not the spare slots', async (t) => {
  const b = new KvBatch(c);
  b.place([entry(1, 2), entry(2, 5), entry(3, 1), entry(4, 3)]);
  t.ok(b.slots > b.rows.length, 'spare slots are allocated for joining rows');
  b.remove(new Set([3]));
  const { attnBias, positions, past } = b.stepFeeds();
  t.same(attnBias.dims, [3, 1, 1, b.capacity + 1]);
  t.same(positions.dims, [3, 1]);
  t.same(past.past_key_0.dims, [3, H, b.capacity, hd]);
  t.same(past.past_value_1.dims, [3, H, b.capacity, hd]);
  t.equal((past.past_key_0.data as Float32Array).length, 3 * H * b.capacity * hd);
  t.equal(b.stats.rows, 3);
  t.equal(b.stats.bytes, L * 2 * b.layers[0].keys.length * 4, 'the allocated buffers');
  t.ok(b.stats.bytes >= b.slots * b.capacity * L * 2 * H * hd * 4, 'which hold every slot');
});

t.test('capacity grows a step of 16 columns at a time past its headroom, keeping every column', async (t) => {
  const b = new KvBatch(c);
  b.place([entry(1, 2), entry(2, 1)]);
  t.equal(b.capacity, 16, 'the longest row plus 8 columns of headroom, rounded up to 16');
  const grown: number[] = [];
  for (let i = 0; i < 40; i++) {
    const cap = b.capacity;
    const bytes = b.append(step(b));
    if (b.capacity !== cap) {
      grown.push(b.capacity);
      t.ok(bytes > 0, 'the copy is counted');
    } else t.equal(bytes, 0, 'a plain decode step copies nothing but the new column');
  }
  t.same(grown, [32, 48], 'grown by 16 each time the longest row filled it');
  t.equal(b.rows.find((r) => r.seq === 1)!.count, 42);
  t.same(mismatches(b), []);
  t.same(feedMismatches(b), [], 'bias and positions kept step by step match a fresh computation');
});

t.test('past 128 columns, capacity grows by an eighth', async (t) => {
  const b = new KvBatch(c);
  b.place([entry(1, 150)]);
  t.equal(b.capacity, 160);
  for (let i = 0; i < 11; i++) b.append(step(b));
  t.equal(b.capacity, 192, '160 + an eighth (20), rounded up to 16 columns');
  t.same(mismatches(b), []);
});

t.test('step feeds: each row masks its unused columns and sits at its own position', async (t) => {
  const b = new KvBatch(c);
  b.place([entry(1, 2), entry(2, 5)]);
  const { attnBias, positions } = b.stepFeeds();
  const T = b.capacity + 1;
  const bias = attnBias.data as Float32Array;
  t.equal(bias[0 * T + 1], 0, 'a used column is visible');
  t.ok(bias[0 * T + 2] < -1e8, 'an unused column is masked');
  t.equal(bias[0 * T + b.capacity], 0, "the step's own column is visible");
  t.equal(Number((positions.data as BigInt64Array)[0]), 2);
  b.append(step(b));
  const after = b.stepFeeds().attnBias.data as Float32Array;
  t.equal(after[0 * T + 2], 0, "the column the step appended is now visible");
  t.ok(after[0 * T + 3] < -1e8);
});

t.test('slots shrink when load falls, grow again when it rises, and do not thrash', async (t) => {
  const b = new KvBatch(c);
  const ids = Array.from({ length: 40 }, (_, i) => i + 1);
  b.place(ids.map((id) => entry(id, 3)));
  t.equal(b.slots, 50, '40 rows and a quarter spare');
  b.remove(new Set(ids.slice(25, 40)));
  t.equal(b.slots, 50, 'half the slots idle: kept');
  b.remove(new Set(ids.slice(13, 25)));
  t.equal(b.rows.length, 13);
  t.equal(b.slots, 50, 'three quarters idle, but more than a quarter live: kept');
  const bytes = b.remove(new Set([ids[12]]));
  t.equal(b.rows.length, 12);
  t.equal(b.slots, 15, 'at most a quarter live: shrunk to the rows and a quarter spare');
  t.equal(bytes, 0, 'in place, at the same columns: the rows keep their slots, nothing moves');
  t.same(mismatches(b), []);
  t.same(feedMismatches(b), []);
  b.remove(new Set([ids[11]]));
  t.equal(b.slots, 15, 'one more row leaving does not shrink again (hysteresis)');
  b.place([101, 102, 103, 104].map((id) => entry(id, 3)));
  t.equal(b.slots, 15, 'joining rows fill the spare slots first');
  b.place([entry(105, 3)]);
  t.equal(b.slots, 20, 'past the slots: grown to the rows and a quarter spare');
  t.same(mismatches(b), []);
  t.same(feedMismatches(b), []);
});

t.test("capacity rounded up past the model's context still grows when a row fills it", async (t) => {
  const b = new KvBatch(c);
  b.place([entry(1, 250)]);
  t.equal(b.capacity, 272, 'past nPositions (256): 250 + 8, rounded up to 16');
  for (let i = 0; i < 30; i++) b.append(step(b));
  t.equal(b.capacity, 288, 'grown by a step, not capped back to nPositions');
  t.equal(b.rows[0].count, 280);
  t.same(mismatches(b), []);
  t.same(feedMismatches(b).filter((m) => !m.startsWith('position')), [], 'positions stop at the last one (checked in the executor)');
});

t.test('columns shrink when a growth\'s worth (at least 32) lies unused beyond what the longest row needs, and grow again', async (t) => {
  const b = new KvBatch(c);
  b.place([entry(1, 200), entry(2, 10), entry(3, 12)]);
  t.equal(b.capacity, 208);
  b.append(step(b));
  b.remove(new Set([3]));
  t.equal(b.capacity, 208, 'the longest row still uses most columns');
  const bytes = b.remove(new Set([1]));
  t.equal(b.capacity, 32, 'shrunk to the longest row (11) and 8 columns of headroom, rounded up to 16');
  t.equal(bytes, 2 * rowBytes(11), 'row 2 moved into the hole, then the shrink copied it once');
  t.same(mismatches(b), []);
  t.same(feedMismatches(b), []);
  for (let i = 0; i < 40; i++) b.append(step(b));
  t.equal(b.capacity, 64, 'grew again, 16 at a time');
  t.same(mismatches(b), []);
  t.same(feedMismatches(b), []);
  b.place([entry(4, 5)]);
  b.remove(new Set([4]));
  t.equal(b.capacity, 64, 'the longest row (51 columns) leaves 13 unused: kept');
});

t.test('the last row leaving clears the batch', async (t) => {
  const b = new KvBatch(c);
  b.place([entry(1, 2)]);
  b.remove(new Set([1]));
  t.equal(b.slots, 0);
  t.equal(b.rows.length, 0);
  t.equal(b.capacity, 0);
  t.same(b.stats, { rows: 0, slots: 0, capacity: 0, bytes: 0 });
});

/** Non-zero floats in live rows' columns beyond their own: what a slot's previous owner left. */
function staleColumns(b: KvBatch): number {
  let stale = 0;
  const cap = b.capacity;
  b.rows.forEach((row, s) => {
    for (const kv of b.layers) for (let h = 0; h < H; h++) {
      const at = (s * H + h) * cap * hd;
      for (let i = at + row.count * hd; i < at + cap * hd; i++) if (kv.keys[i] !== 0 || kv.values[i] !== 0) stale++;
    }
  });
  return stale;
}

t.test("a slot's next owner never sees its previous owner's columns (masked, but an Inf there would still poison attention)", async (t) => {
  const b = new KvBatch(c);
  b.place([entry(1, 12), entry(2, 3), entry(3, 14), entry(4, 2)]);
  for (let i = 0; i < 3; i++) b.append(step(b));
  b.remove(new Set([1, 3])); // the short rows 4 and 2 move into the long rows' slots
  t.same(seqs(b), [4, 2]);
  t.equal(staleColumns(b), 0, 'moved rows');
  b.remove(new Set([2]));
  b.place([entry(5, 1), entry(6, 2)]); // new rows into slots that long rows held
  t.equal(staleColumns(b), 0, 'joining rows');
  t.same(mismatches(b), []);
  b.append(step(b));
  t.equal(staleColumns(b), 0, 'after a step');
  t.same(mismatches(b), []);
});

t.test('resizes restride the rows in place when the buffers hold them, both ways, and leave no stale column', async (t) => {
  const b = new KvBatch(c);
  b.place([entry(1, 60), entry(2, 3), entry(3, 17), entry(4, 9)]);
  t.equal(b.capacity, 80);
  const buffers = b.layers.map((l) => l.keys);
  // Growth: 80 → 96 columns; the first allocation kept half as much again to spare.
  for (let i = 0; i < 21; i++) b.append(step(b));
  t.equal(b.capacity, 96);
  t.ok(b.layers.every((l, i) => l.keys === buffers[i]), 'grown in the same buffers');
  t.same(mismatches(b), []);
  t.same(feedMismatches(b), []);
  t.equal(staleColumns(b), 0, "each row's columns beyond its own are zero after growing");
  // Shrink: the longest row (81) leaves; row 3 (38 columns) leaves 58 unused.
  const copied = b.remove(new Set([1]));
  t.equal(b.capacity, 48, 'shrunk to 38 + 8, rounded up to 16');
  t.equal(copied, rowBytes(30) + rowBytes(24) + rowBytes(38) + rowBytes(30), 'row 4 moved into the hole, then every row restrided once');
  t.ok(b.layers.every((l, i) => l.keys === buffers[i]), 'shrunk in the same buffers');
  t.same(mismatches(b), []);
  t.same(feedMismatches(b), []);
  t.equal(staleColumns(b), 0, 'after shrinking');
  // Rows joining spare slots whose memory held other rows' columns before the restrides.
  b.place([entry(5, 2), entry(6, 1), entry(7, 4)]);
  t.equal(staleColumns(b), 0, 'joining rows see zeros beyond their own columns');
  t.same(mismatches(b), []);
  t.same(feedMismatches(b), []);
});

t.test('the buffers are kept while rows run, reused when load returns, and given back when the batch empties', async (t) => {
  const b = new KvBatch(c);
  const ids = Array.from({ length: 40 }, (_, i) => i + 1);
  b.place(ids.map((id) => entry(id, 3)));
  const buffers = b.layers.map((l) => l.values);
  const bytes = b.stats.bytes;
  b.remove(new Set(ids.slice(1)));
  t.equal(b.slots, 2, 'the layout shrank to the one row');
  t.equal(b.stats.bytes, bytes, 'its memory did not');
  const copied = b.place(ids.slice(1).map((id) => entry(id, 3)));
  t.equal(b.slots, 50);
  t.ok(b.layers.every((l, i) => l.values === buffers[i]), 'the rows that came back use the same buffers');
  t.equal(copied, 39 * rowBytes(3), 'only the joining rows were written');
  t.same(mismatches(b), []);
  t.same(feedMismatches(b), []);
  t.equal(staleColumns(b), 0);
  b.remove(new Set(ids));
  t.equal(b.stats.bytes, 0, 'an empty batch holds no memory');
});

t.test('past 256 columns, a row leaving right after a growth does not shrink it back (adversarial review: it restrode every row twice per growth)', async (t) => {
  const b = new KvBatch({ ...c, nPositions: 2048 });
  b.place([entry(1, 300), ...Array.from({ length: 12 }, (_, i) => entry(100 + i, 5))]);
  let next = 200;
  let resizes = 0;
  let shrinks = 0;
  for (let i = 0; i < 300; i++) {
    const cap = b.capacity;
    b.append(step(b));
    // A short row leaves and another joins every step, as under steady traffic.
    b.remove(new Set([b.rows[1 + (i % 12)].seq]));
    b.place([entry(next++, 5)]);
    if (b.capacity !== cap) resizes++;
    if (b.capacity < cap) shrinks++;
  }
  const long = b.rows.find((r) => r.seq === 1)!;
  t.equal(long.count, 600);
  t.equal(shrinks, 0, 'no shrink while the long row runs');
  t.ok(resizes <= 7, `${resizes} growths from 320 to ${b.capacity} columns`);
  t.same(mismatches(b), []);
});
