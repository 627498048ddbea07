import t from 'tap';
import { PrefillBudget } from '../../src/engine/prefill-budget.js';
import { lengthRuns } from '../../src/executor/prefill.js';

/** Park–Miller: the same cases on every run. */
function rng(seed: number): () => number {
  let x = seed;
  return () => (x = (x * 48271) % 2147483647) / 2147483647;
}

/** Positions the worker computes for these units: lengthRuns' split, each run padded to its widest unit. */
function workerPositions(units: { rows: number; width: number }[], runCost: number): number {
  return lengthRuns(units, runCost).reduce((sum, run) => sum + run.reduce((r, u) => r + units[u].rows, 0) * Math.max(...run.map((u) => units[u].width)), 0);
}

t.test('the bound is never below what the worker computes, and fits() admits exactly up to the limit', async (t) => {
  const random = rng(7);
  let checked = 0;
  const wrong: string[] = [];
  for (const runCost of [0, 8, 24, 100, Infinity]) {
    for (let c = 0; c < 40; c++) {
      const limit = 64 + Math.floor(random() * 4000);
      const budget = new PrefillBudget(limit, runCost);
      const units: { rows: number; width: number }[] = [];
      for (let i = 0; i < 80; i++) {
        // Mostly short rows, some long ones; now and then an ensemble (its members at its widest).
        const width = random() < 0.15 ? 100 + Math.floor(random() * 1500) : 1 + Math.floor(random() * 40);
        const rows = random() < 0.1 ? 2 + Math.floor(random() * 3) : 1;
        const fits = budget.fits(width, rows);
        const trial = new PrefillBudget(Infinity, runCost);
        for (const u of units) trial.take(u.width, u.rows);
        trial.take(width, rows);
        if (fits !== (units.length === 0 || trial.positions <= limit)) wrong.push(`cost ${runCost}: fits() ${fits} with the bound after taking at ${trial.positions}, limit ${limit}`);
        if (!fits) continue;
        budget.take(width, rows);
        units.push({ rows, width });
        const computed = workerPositions(units, runCost);
        if (computed > budget.positions) wrong.push(`cost ${runCost}: the worker computes ${computed} positions, above the bound ${budget.positions}`);
        if (units.length > 1 && budget.positions > limit) wrong.push(`cost ${runCost}: bound ${budget.positions} above the limit ${limit}`);
        checked++;
      }
    }
  }
  t.same(wrong.slice(0, 5), [], `${wrong.length} wrong`);
  t.ok(checked > 1000, `${checked} admitted rows checked`);
});

t.test('a long prompt leaves room for short ones when the worker splits runs; with one run, rows × widest', async (t) => {
  const admitted = (runCost: number) => {
    const b = new PrefillBudget(4096, runCost);
    b.take(2000);
    let n = 0;
    while (n < 200 && b.fits(20)) {
      b.take(20);
      n++;
    }
    return n;
  };
  // 2,000 + n × 20 (class 17–32, padded to 20) + 24 for the second run ≤ 4,096.
  t.equal(admitted(24), 103);
  t.equal(admitted(Infinity), 1, '3 × 2,000 > 4,096');
  const b = new PrefillBudget(4096, 24);
  t.equal(b.positions, 0);
  t.ok(b.fits(10_000), "a step's first row always fits, however long");
  b.take(10_000);
  t.notOk(b.fits(1));
  const same = new PrefillBudget(100, 24);
  for (let i = 0; i < 10; i++) same.take(10);
  t.equal(same.positions, 100, 'equal rows: one run, no run cost');
  t.notOk(same.fits(10));
});
