/**
 * One step's prefill budget (MAX_BATCH_TOKENS) as the scheduler admits new rows: a bound on the
 * positions the worker will compute for them, kept in O(1) per row.
 *
 * The worker splits a step's new rows into runs of similar length (src/executor/prefill.ts
 * lengthRuns: the fewest positions plus `runCost` per run, over every split). So what it computes
 * is at most what either of two splits computes:
 * - one run, every row padded to the widest: rows × widest (the only split when runCost is
 *   Infinity, as on WebGPU);
 * - one run per width class, widths in (2^(k-1), 2^k], each row padded to less than twice its
 *   length, plus runCost for each run beyond the first (the worker may give up that many positions
 *   to save runs).
 * With prompts of mixed lengths the second bound admits far more short rows beside a long one: a
 * 2,000-token prompt left room for one more row of any length under rows × widest (4,096).
 * Rows of the base graph are packed instead (prefill.ts packedRuns): they compute only their own
 * positions, fewer than either bound counts, so the bound still holds.
 */
export class PrefillBudget {
  private rows = 0;
  private widest = 0;
  /** Per width class: its rows and its widest row. */
  private readonly classes = new Map<number, { rows: number; widest: number }>();
  /** Σ rows × widest over the classes. */
  private classPositions = 0;

  constructor(
    private readonly limit: number,
    private readonly runCost: number,
  ) {}

  /** Whether `count` more rows of `width` fit (an ensemble: its members at its widest). A step's first row always fits. */
  fits(width: number, count = 1): boolean {
    return this.rows === 0 || this.positionsWith(width, count) <= this.limit;
  }

  take(width: number, count = 1): void {
    const k = widthClass(width);
    const c = this.classes.get(k) ?? { rows: 0, widest: 0 };
    this.classPositions -= c.rows * c.widest;
    c.rows += count;
    c.widest = Math.max(c.widest, width);
    this.classPositions += c.rows * c.widest;
    this.classes.set(k, c);
    this.rows += count;
    this.widest = Math.max(this.widest, width);
  }

  /** The bound for the rows taken so far. */
  get positions(): number {
    return this.bound(this.rows, this.widest, this.classPositions, this.classes.size);
  }

  /** The bound with `count` more rows of `width`. */
  private positionsWith(width: number, count: number): number {
    const c = this.classes.get(widthClass(width));
    const grown = ((c?.rows ?? 0) + count) * Math.max(c?.widest ?? 0, width) - (c ? c.rows * c.widest : 0);
    return this.bound(this.rows + count, Math.max(this.widest, width), this.classPositions + grown, this.classes.size + (c ? 0 : 1));
  }

  /** The lesser of one padded run and one run per width class plus runCost per run beyond the first. */
  private bound(rows: number, widest: number, classPositions: number, classes: number): number {
    const oneRun = rows * widest;
    if (this.runCost === Infinity || classes === 0) return oneRun;
    return Math.min(oneRun, classPositions + this.runCost * (classes - 1));
  }
}

/** k such that width is in (2^(k-1), 2^k]. */
function widthClass(width: number): number {
  return Math.ceil(Math.log2(Math.max(1, width)));
}
