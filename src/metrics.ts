import { monitorEventLoopDelay } from 'node:perf_hooks';
import client from 'prom-client';

/** The event-loop delay's p99 covers windows of this length. */
const LOOP_WINDOW_MS = 10_000;

/**
 * The event-loop delay over fixed windows, not since the last scrape: a reading that a scrape reset
 * would give each of two scrapers (a Prometheus pair) half the samples, and a value that depended
 * on when each scraped.
 */
export class LoopDelayWindow {
  private readonly monitor = monitorEventLoopDelay({ resolution: 10 });
  /** p99 of the last complete window, in ms; null before the first window ends. */
  private last: number | null = null;
  private readonly timer: NodeJS.Timeout;

  constructor(windowMs: number) {
    this.monitor.enable();
    this.timer = setInterval(() => this.roll(), windowMs).unref();
  }

  /** Ends the current window: its p99 is what scrapes read until the next one ends. */
  roll(): void {
    this.last = this.current();
    this.monitor.reset();
  }

  private current(): number {
    return this.monitor.count > 0 ? this.monitor.percentile(99) / 1e6 : 0;
  }

  p99Ms(): number {
    return this.last ?? this.current();
  }

  close(): void {
    clearInterval(this.timer);
    this.monitor.disable();
  }
}

/**
 * Prometheus metrics. Task labels are bounded: the first `maxTasks` tasks seen keep their name,
 * later ones are counted as 'other', so thousands of adapters cannot blow up the series count.
 * Callers pass 'unknown' for ids that name no task, so made-up ids cannot take those labels.
 */
export class Metrics {
  readonly registry = new client.Registry();
  private readonly tasks = new Set<string>();
  private readonly requests: client.Counter<'task' | 'route' | 'status'>;
  private readonly tokens: client.Counter<'task'>;
  private readonly errors: client.Counter<'task' | 'code'>;
  private readonly batchRows: client.Histogram;
  private readonly batchTokens: client.Histogram;
  private readonly queueWait: client.Histogram;
  private readonly ttft: client.Histogram;
  private readonly interToken: client.Histogram;
  private readonly kvCopied: client.Counter;
  private readonly promptKv: client.Counter<'result'>;
  private readonly stepRun: client.Histogram;
  private readonly stepHost: client.Histogram;
  private readonly stepRows: client.Histogram<'kind'>;
  private readonly paddedTokens: client.Counter;
  readonly loop: LoopDelayWindow;

  constructor(
    private readonly maxTasks: number,
    sources: {
      queueDepth: () => number;
      running: () => number;
      adapters: () => number;
      cache: () => { hits: number; misses: number; evictions: number; bytes: number };
      /** Each worker's KV batch, by worker index (optional: tests may leave it out). */
      kv?: () => { rows: number; slots: number; capacity: number; bytes: number }[];
      /** The adapters each worker holds, by worker index (src/executor/reclaim.ts for the collections). */
      workerAdapters?: () => { held: number; bytes: number; collections?: number }[];
      /** Times the shared adapter store was found to have lost its data (src/adapters/registry.ts). */
      storeResets?: () => number;
    },
    /** The event-loop delay's window (tests shorten it). */
    loopWindowMs = LOOP_WINDOW_MS,
  ) {
    const r = this.registry;
    client.collectDefaultMetrics({ register: r });
    this.loop = new LoopDelayWindow(loopWindowMs);
    const ms = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];
    this.requests = new client.Counter({ name: 'sps_requests_total', help: 'Inference requests by task, route and status', labelNames: ['task', 'route', 'status'], registers: [r] });
    this.tokens = new client.Counter({ name: 'sps_generated_tokens_total', help: 'Generated tokens by task', labelNames: ['task'], registers: [r] });
    this.errors = new client.Counter({ name: 'sps_errors_total', help: 'Failed inference requests by task and error code', labelNames: ['task', 'code'], registers: [r] });
    this.batchRows = new client.Histogram({ name: 'sps_batch_rows', help: 'Rows per forward step', buckets: [1, 2, 4, 8, 16, 32, 64, 128], registers: [r] });
    this.batchTokens = new client.Histogram({ name: 'sps_batch_tokens', help: 'Tokens per forward step (decode rows + prefill tokens)', buckets: [1, 8, 32, 128, 512, 2048, 8192], registers: [r] });
    this.queueWait = new client.Histogram({ name: 'sps_queue_wait_ms', help: 'Time from admission to the queue until the first step', buckets: ms, registers: [r] });
    this.ttft = new client.Histogram({ name: 'sps_time_to_first_token_ms', help: 'Time to first token', buckets: ms, registers: [r] });
    this.interToken = new client.Histogram({ name: 'sps_inter_token_ms', help: 'Time between tokens of one request', buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500], registers: [r] });
    this.promptKv = new client.Counter({ name: 'sps_prompt_kv_cache_total', help: 'New rows of soft-prompt adapters: hit (the KV of the soft prompt was held), miss (computed in that step)', labelNames: ['result'], registers: [r] });
    this.kvCopied = new client.Counter({ name: 'sps_kv_copied_bytes_total', help: 'Bytes of KV cache copied by the workers (joins into slots, compactions)', registers: [r] });
    const stepMs = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];
    this.stepRun = new client.Histogram({ name: 'sps_step_forward_ms', help: 'Time per step inside ONNX Runtime (session.run), per worker step', buckets: stepMs, registers: [r] });
    this.stepHost = new client.Histogram({ name: 'sps_step_host_ms', help: "Time per step in the worker outside session.run (feeds, sampling, KV copies)", buckets: stepMs, registers: [r] });
    this.stepRows = new client.Histogram({ name: 'sps_step_rows', help: 'Rows per step by kind: decode (live rows computed), prefill (new sequences), score', labelNames: ['kind'], buckets: [1, 2, 4, 8, 16, 32, 64, 128], registers: [r] });
    this.paddedTokens = new client.Counter({ name: 'sps_prefill_padded_tokens_total', help: 'Padding positions computed by prefill steps (rows × padded length − real lengths)', registers: [r] });
    const kv = sources.kv ?? (() => []);
    const kvGauge = (name: string, help: string, pick: (k: ReturnType<typeof kv>[number]) => number) =>
      new client.Gauge({ name, help, labelNames: ['worker'], registers: [r], collect() { kv().forEach((k, i) => this.set({ worker: String(i) }, pick(k))); } });
    kvGauge('sps_kv_rows', 'Live rows in the worker\'s KV batch (what a decode step computes)', (k) => k.rows);
    kvGauge('sps_kv_slots', 'Allocated slots of the worker\'s KV batch (live rows and spare slots)', (k) => k.slots);
    kvGauge('sps_kv_capacity_columns', 'Allocated columns per slot of the worker\'s KV batch', (k) => k.capacity);
    kvGauge('sps_kv_bytes', 'Bytes of the worker\'s KV buffers', (k) => k.bytes);
    const held = sources.workerAdapters ?? (() => []);
    new client.Gauge({ name: 'sps_worker_adapters', help: 'Adapters the worker holds (at most 512 and ADAPTER_CACHE_BYTES of them; one adapter larger than that runs alone)', labelNames: ['worker'], registers: [r], collect() { held().forEach((h, i) => this.set({ worker: String(i) }, h.held)); } });
    new client.Gauge({ name: 'sps_worker_adapter_bytes', help: 'Bytes of the adapters the worker holds', labelNames: ['worker'], registers: [r], collect() { held().forEach((h, i) => this.set({ worker: String(i) }, h.bytes)); } });
    new client.Counter({ name: 'sps_worker_gc_collections_total', help: 'Full garbage collections the worker ran to free the adapters it forgot (once per 32 MiB forgotten); starts again at 0 with a restarted worker', labelNames: ['worker'], registers: [r], collect() { this.reset(); held().forEach((h, i) => this.inc({ worker: String(i) }, h.collections ?? 0)); } });
    new client.Gauge({ name: 'sps_queue_depth', help: 'Requests waiting for admission', registers: [r], collect() { this.set(sources.queueDepth()); } });
    new client.Gauge({ name: 'sps_running_sequences', help: 'Sequences in the running batch', registers: [r], collect() { this.set(sources.running()); } });
    new client.Gauge({ name: 'sps_adapters_registered', help: 'Registered adapters', registers: [r], collect() { this.set(sources.adapters()); } });
    // Counters (rate() and increase() apply) read from running totals kept elsewhere, at each scrape.
    const total = (name: string, help: string, read: () => number) => new client.Counter({ name, help, registers: [r], collect() { this.reset(); this.inc(read()); } });
    total('sps_adapter_cache_hits_total', 'Adapter cache hits: a decoded adapter was in memory', () => sources.cache().hits);
    total('sps_adapter_cache_misses_total', 'Adapter cache misses: an adapter was read and decoded from the store', () => sources.cache().misses);
    total('sps_adapter_cache_evictions_total', 'Decoded adapters evicted to stay within ADAPTER_CACHE_BYTES', () => sources.cache().evictions);
    const storeResets = sources.storeResets;
    if (storeResets) total('sps_adapter_store_resets_total', 'Times the shared adapter store was found to have lost its data (its epoch changed): the adapters held were kept, and ADAPTERS_DIR re-seeded it', storeResets);
    new client.Gauge({ name: 'sps_adapter_cache_bytes', help: 'Bytes of decoded adapters in memory', registers: [r], collect() { this.set(sources.cache().bytes); } });
    const loop = this.loop;
    new client.Gauge({ name: 'sps_event_loop_delay_p99_ms', help: `Event-loop delay, p99 over the last ${loopWindowMs / 1000} s window (the current one until a window has ended)`, registers: [r], collect() { this.set(loop.p99Ms()); } });
  }

  /** Stops the event-loop delay monitor and its window timer. */
  close(): void {
    this.loop.close();
  }

  /** 'unknown' (requests naming no existing task) is a label of its own, outside the bound. */
  private label(task: string): string {
    if (task === 'unknown' || this.tasks.has(task)) return task;
    if (this.tasks.size < this.maxTasks) {
      this.tasks.add(task);
      return task;
    }
    return 'other';
  }

  request(task: string, route: string, status: number, code?: string): void {
    const t = this.label(task);
    this.requests.inc({ task: t, route, status: String(status) });
    if (code) this.errors.inc({ task: t, code });
  }

  generated(task: string, n: number): void {
    if (n > 0) this.tokens.inc({ task: this.label(task) }, n);
  }

  step(rows: number, tokens: number, kvCopiedBytes: number): void {
    this.batchRows.observe(rows);
    this.batchTokens.observe(tokens);
    this.kvCopied.inc(kvCopiedBytes);
  }

  /** A step's soft-prompt KV cache lookups (StepResult.promptKv). */
  promptKvLookups(counts: { hits: number; misses: number } | undefined): void {
    if (counts?.hits) this.promptKv.inc({ result: 'hit' }, counts.hits);
    if (counts?.misses) this.promptKv.inc({ result: 'miss' }, counts.misses);
  }

  /** One worker step's split: forward time, host time, rows by kind, prefill padding. */
  stepDetail(s: { runMs: number; totalMs: number; decode: number; prefill: number; score: number; paddedTokens: number }): void {
    this.stepRun.observe(s.runMs);
    this.stepHost.observe(Math.max(0, s.totalMs - s.runMs));
    if (s.decode > 0) this.stepRows.observe({ kind: 'decode' }, s.decode);
    if (s.prefill > 0) this.stepRows.observe({ kind: 'prefill' }, s.prefill);
    if (s.score > 0) this.stepRows.observe({ kind: 'score' }, s.score);
    if (s.paddedTokens > 0) this.paddedTokens.inc(s.paddedTokens);
  }

  waited(ms: number): void {
    this.queueWait.observe(ms);
  }

  firstToken(ms: number): void {
    this.ttft.observe(ms);
  }

  nextToken(ms: number): void {
    this.interToken.observe(ms);
  }
}
