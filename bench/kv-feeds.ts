/**
 * Host cost of a decode step's feeds (attention bias, positions, past-KV tensors): rebuilt for every slot each step (the
 * former KvBatch.stepFeeds, reproduced here) against kept between steps and updated in place (the
 * current one), at the demo model's shape. Interleaved rounds; median and min–max µs per step.
 *   node dist/bench/kv-feeds.js [--rounds 5] [--steps 2000]
 */
import ort from 'onnxruntime-node';
import { parseArgs } from 'node:util';
import { KvBatch, type Entry, type LayerKv } from '../src/executor/kv-batch.js';
import { NEG } from '../src/executor/model-constants.js';
import type { ModelConfig } from '../src/model/checkpoint.js';
import { machineInfo, percentile } from './harness.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({ options: { rounds: { type: 'string', default: '5' }, steps: { type: 'string', default: '2000' } } });
const ROUNDS = Number(args.rounds);
const STEPS = Number(args.steps);
const c = { layers: 4, heads: 4, kvHeads: 4, headDim: 64, nPositions: 1024 } as ModelConfig;

/** A batch of `rows` live rows, `count` columns each. */
function batch(rows: number, count: number): KvBatch {
  const b = new KvBatch(c);
  const kv: LayerKv[] = Array.from({ length: c.layers }, () => ({ keys: new Float32Array(c.kvHeads * count * c.headDim), values: new Float32Array(c.kvHeads * count * c.headDim) }));
  const entries: Entry[] = Array.from({ length: rows }, (_, i) => ({ keep: { seq: i, adapter: null, position: count }, segments: [{ kv, cols: count, row: 0, from: 0, to: count }] }));
  b.place(entries);
  return b;
}

/** The former stepFeeds: bias and positions allocated and filled for every slot, every step. */
function rebuilt(b: KvBatch, slots: number): ort.Tensor[] {
  const T = b.capacity + 1;
  const bias = new Float32Array(slots * T);
  const positions = new BigInt64Array(slots);
  for (let r = 0; r < slots; r++) {
    const row = b.rows[r];
    bias.fill(NEG, r * T + (row?.count ?? 0), r * T + b.capacity);
    positions[r] = BigInt(Math.min(row?.position ?? 0, c.nPositions - 1));
  }
  const past = b.layers.flatMap((kv) => [
    new ort.Tensor('float32', kv.keys, [slots, c.kvHeads, b.capacity, c.headDim]),
    new ort.Tensor('float32', kv.values, [slots, c.kvHeads, b.capacity, c.headDim]),
  ]);
  return [new ort.Tensor('float32', bias, [slots, 1, 1, T]), new ort.Tensor('int64', positions, [slots, 1]), ...past];
}

/** The current stepFeeds: views of the kept buffers over the live rows. */
function kept(b: KvBatch): ort.Tensor[] {
  const f = b.stepFeeds();
  return [f.attnBias, f.positions, ...Object.values(f.past)];
}

const shapes = [
  { rows: 1, count: 40 },
  { rows: 64, count: 100 },
  { rows: 64, count: 400 },
];
const results = new Map<string, number[]>();
for (let round = 0; round < ROUNDS; round++) {
  for (const s of shapes) {
    const b = batch(s.rows, s.count);
    for (const [name, f] of [['rebuilt every step', () => rebuilt(b, b.slots)], ['kept, updated in place', () => kept(b)]] as const) {
      const t0 = performance.now();
      for (let i = 0; i < STEPS; i++) f();
      const us = ((performance.now() - t0) * 1000) / STEPS;
      const key = `${s.rows}\n${s.count}\n${name}`;
      results.set(key, [...(results.get(key) ?? []), us]);
    }
  }
}
const span = (xs: number[]) => `${percentile(xs, 50).toFixed(1)} (${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)})`;
const info = machineInfo();
console.log(`\nattention bias and positions per decode step, µs (the whole stepFeeds: bias, positions and the past-KV tensors): ${ROUNDS} interleaved rounds × ${STEPS} steps; ${info.cpu}, ${info.cores} cores\n`);
printTable(
  ['live rows', 'columns used', 'rebuilt every step µs', 'kept, updated in place µs'],
  shapes.map((s) => [s.rows, s.count, span(results.get(`${s.rows}\n${s.count}\nrebuilt every step`)!), span(results.get(`${s.rows}\n${s.count}\nkept, updated in place`)!)]),
);
