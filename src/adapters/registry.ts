import { setMaxListeners } from 'node:events';
import type { Logger } from 'pino';
import { FormatError, ServerError, shuttingDown } from '../errors.js';
import type { BaseModel } from '../model/base-model.js';
import type { Adapter, AdapterFiles } from './format.js';
import { LatestPerTask } from './latest-per-task.js';
import { LruCache } from './lru.js';
import { AdapterParser, PARSE_INLINE_BYTES } from './parser.js';
import type { AdapterStore, StoreChange, StoredMeta } from './store.js';
import { DEFAULT_SPEC, type TaskSpec } from './task-spec.js';

export { readAdapterFolder } from './fs-store.js';

export const TASK_ID = /^[a-z0-9][a-z0-9._-]{0,63}$/;
export const BASE_TASK = 'base';
/** An announced adapter whose load failed for want of the store is tried again after 1 s, doubling to 30 s. */
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30_000;

/** What a request is pinned to at admission: the adapter version it will run on to the end. */
export interface ResolvedTask {
  task: string;
  version: string;
  adapter: Adapter | null;
  spec: TaskSpec;
}

export interface AdapterInfo {
  task: string;
  version: string;
  peft_type: string;
  kind: string;
  bytes: number;
  created_at: string;
}

function info(m: StoredMeta): AdapterInfo {
  return { task: m.task, version: m.version, peft_type: m.peftType, kind: m.kind, bytes: m.bytes, created_at: m.createdAt };
}

function metaOf(a: Adapter): StoredMeta {
  return { task: a.task, version: a.version, peftType: a.peftType, kind: a.spec.kind, bytes: a.bytes, createdAt: a.createdAt };
}

/**
 * Task id → current adapter version, over a store. Every registered task's metadata is in memory;
 * decoded tensors are in an LRU cache under a byte budget and come back from the store on demand.
 * Swapping a version replaces one map entry: requests already admitted hold the old Adapter
 * object and finish on it; requests admitted after see the new one.
 */
export class Registry {
  private readonly meta = new Map<string, StoredMeta>();
  private readonly cache: LruCache<string, Adapter>;
  /** Reloads in flight, by task@version. */
  private readonly loading = new Map<string, Promise<Adapter>>();
  /** Adapters another replica announced that are still loading here, by task: settles with the load's error, if any. */
  private readonly announced = new LatestPerTask<unknown>();
  /**
   * Why changes apply in order: every change to a task (announced, uploaded or deleted here) takes
   * the next number of one counter; the outcome of a store read is applied only if no later change
   * to that task started meanwhile, so a slow load can never resurrect a task deleted after it began.
   */
  private changeCounter = 0;
  private readonly lastChange = new Map<string, number>();
  /** This replica's own writes in flight (task → version, null: delete), whose announcements it ignores. */
  private readonly writing = new Map<string, string | null>();
  /** Tasks held when the shared index was found empty: served from memory until deleted or replaced. */
  private readonly orphans = new Set<string>();
  /** Aborted at shutdown: writes are refused from then on, and every upload being received listens to it. */
  private readonly writesClosed = new AbortController();
  private reconcileTimer: NodeJS.Timeout | null = null;
  /**
   * Announced adapters whose load failed for want of the store (store_unavailable: a command that
   * timed out), by task: the load is tried again after 1 s, doubling to 30 s, and meanwhile a
   * request for the task gets that 503 rather than 404. Any later change to the task, a reconcile
   * (the index is then the truth) and stop() end it.
   */
  private readonly retrying = new Map<string, { error: ServerError; timer: NodeJS.Timeout }>();
  private stopped = false;
  /** The shared store's lifetime id when last read; a different one means it lost its data. */
  private storeEpoch: string | undefined;
  readonly baseVersion: string;
  private readonly parser: AdapterParser;
  private inSync = false;
  /** Times the shared store was found to have lost its data (its epoch changed, or an epoch-less store's index empty while this replica held adapters). */
  storeResets = 0;
  /** Called after a store reset was detected, to re-seed the empty index (from ADAPTERS_DIR). */
  onStoreReset: (() => Promise<void>) | null = null;

  constructor(
    readonly model: BaseModel,
    private readonly store: AdapterStore,
    private readonly log: Logger,
    cacheBytes = 256 * 1024 * 1024,
    parseInlineBytes = PARSE_INLINE_BYTES,
  ) {
    this.baseVersion = `base-${model.hash.slice(0, 12)}`;
    this.parser = new AdapterParser({ config: model.config, biases: model.tensors.biases, encode: (text) => model.tokenizer.encodeSync(text) }, parseInlineBytes);
    this.cache = new LruCache(cacheBytes);
    setMaxListeners(0, this.writesClosed.signal); // one listener per upload in progress, however many
  }

  get cacheStats() {
    return { hits: this.cache.hits, misses: this.cache.misses, evictions: this.cache.evictions, entries: this.cache.size, bytes: this.cache.bytes };
  }

  get storeName(): string {
    return this.store.name;
  }

  /** Ready to serve: the index was read, and a shared store is reachable. */
  get synced(): boolean {
    return this.inSync && this.store.healthy();
  }

  private begin(task: string): number {
    const n = ++this.changeCounter;
    this.lastChange.set(task, n);
    this.stopRetry(task);
    return n;
  }

  private stopRetry(task: string): void {
    clearTimeout(this.retrying.get(task)?.timer);
    this.retrying.delete(task);
  }

  private isLatest(task: string, n: number): boolean {
    return this.lastChange.get(task) === n;
  }

  /**
   * Bytes an adapter holds once served: its tensors, and for a soft prompt or a prefix the KV a
   * worker keeps for it (n · layers · 2 · kv_heads · head_dim float32, src/executor/prompt-kv.ts).
   */
  private cost(a: Adapter): number {
    const { kind, virtualTokens: n } = a.tensors;
    const { layers, kvHeads, headDim } = this.model.config;
    return a.residentBytes + (kind === 'prompt' || kind === 'prefix' ? n * layers * 2 * kvHeads * headDim * 4 : 0);
  }

  private drop(task: string): void {
    this.meta.delete(task);
    this.cache.delete(task);
    this.orphans.delete(task);
  }

  private hold(adapter: Adapter): void {
    this.meta.set(adapter.task, metaOf(adapter));
    this.cache.set(adapter.task, adapter, this.cost(adapter));
    this.orphans.delete(adapter.task);
  }

  /**
   * Reads the store's index. `validate`: parse every adapter now (at startup, where files may have
   * been copied in by hand or stored by an older version); a bad one is logged with its reason and
   * skipped. Tasks changed while the index was read keep what those changes applied.
   */
  async sync(validate: boolean): Promise<{ loaded: string[]; skipped: { task: string; reason: string }[] }> {
    const started = this.changeCounter;
    const loaded: string[] = [];
    const skipped: { task: string; reason: string }[] = [];
    const fresh = new Map<string, StoredMeta>();
    const decoded = new Map<string, Adapter>();
    const epoch = await this.store.epoch?.();
    const index = await this.store.index();
    const reset = this.detectReset(epoch, index.length);
    for (const m of index) {
      try {
        if (!TASK_ID.test(m.task) || m.task === BASE_TASK) throw new FormatError('invalid_task_id', `'${m.task}' is not a valid task id`);
        if (validate || !m.version) {
          const stored = await this.store.load(m.task);
          if (!stored) throw new FormatError('missing_files', 'the index names it, but the store has no files for it (or only some)');
          const adapter = await this.parse(m.task, stored.files, m.createdAt);
          fresh.set(m.task, metaOf(adapter));
          decoded.set(m.task, adapter);
        } else fresh.set(m.task, m);
        loaded.push(m.task);
      } catch (e) {
        if (!(e instanceof FormatError) && m.version) {
          // Not the files' fault (the parser stopped or died): register it as the index says; it loads on demand.
          fresh.set(m.task, m);
          loaded.push(m.task);
          this.log.warn({ task: m.task, err: (e as Error).message }, 'adapter not decoded now: it will load on first use');
          continue;
        }
        const reason = e instanceof FormatError ? `${e.code}: ${e.message}` : (e as Error).message;
        skipped.push({ task: m.task, reason });
        this.log.warn({ task: m.task, reason }, 'adapter skipped');
      }
    }
    const changedMeanwhile = (task: string) => (this.lastChange.get(task) ?? 0) > started;
    // The index read says what the store holds: a task in it loads on first use, one not in it is gone.
    for (const task of [...this.retrying.keys()]) if (!changedMeanwhile(task)) this.stopRetry(task);
    for (const task of [...this.meta.keys()]) {
      if (changedMeanwhile(task) || fresh.has(task)) continue;
      if (this.orphans.has(task)) continue;
      this.drop(task);
    }
    for (const [task, m] of fresh) {
      if (changedMeanwhile(task)) continue;
      if (this.meta.get(task)?.version !== m.version) this.cache.delete(task);
      this.meta.set(task, m);
      this.orphans.delete(task);
      const adapter = decoded.get(task);
      if (adapter) this.cache.set(task, adapter, this.cost(adapter));
    }
    this.inSync = true;
    this.log.info({ store: this.store.name, loaded: loaded.length, skipped: skipped.length }, 'adapter registry synchronised');
    if (reset) await this.reseed();
    return { loaded, skipped };
  }

  /**
   * A shared store lost its data (a Redis restarted without persistence) when its epoch changed, or,
   * for a store without one, when its index is empty while this replica holds adapters: that is never
   * a deletion of everything (deletions come one by one, announced). Then every held adapter becomes an orphan: kept and
   * served from memory until it is deleted or replaced, or evicted (nobody can reload it).
   */
  private detectReset(epoch: string | undefined, indexSize: number): boolean {
    const previous = this.storeEpoch;
    this.storeEpoch = epoch;
    // A store with an epoch says so itself; one without is judged by an empty index.
    const lost = epoch !== undefined ? previous !== undefined && epoch !== previous : indexSize === 0 && this.meta.size > 0 && this.store.watch !== undefined;
    if (!lost) return false;
    this.storeResets++;
    // A retry would find nothing now, and drop an adapter this replica should keep serving.
    for (const task of [...this.retrying.keys()]) this.stopRetry(task);
    for (const task of this.meta.keys()) this.orphans.add(task);
    this.log.error({ store: this.store.name, held: this.meta.size }, 'the shared adapter store lost its data: keeping the adapters held in memory and re-seeding it from ADAPTERS_DIR');
    return true;
  }

  private async reseed(): Promise<void> {
    try {
      await this.onStoreReset?.();
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, 'could not re-seed the adapter store');
    }
  }

  /**
   * Follows changes other replicas make through a shared store, and reconciles with its index every
   * `reconcileMs` (0: only on reconnect), in case an announcement was lost.
   */
  follow(reconcileMs = 0): void {
    if (!this.store.watch) return;
    this.store.watch((change) => void this.onChange(change));
    if (reconcileMs > 0) {
      this.reconcileTimer = setInterval(() => void this.resync(), reconcileMs);
      this.reconcileTimer.unref();
    }
  }

  stop(): void {
    if (this.reconcileTimer) clearInterval(this.reconcileTimer);
    this.reconcileTimer = null;
    this.stopped = true;
    for (const task of [...this.retrying.keys()]) this.stopRetry(task);
    void this.parser.close();
  }

  /** Shutting down: uploads and deletes get 503 shutting_down from now on, as new inference does. */
  refuseWrites(): void {
    this.writesClosed.abort();
  }

  /** Aborted when writes are refused: an upload still being received stops there with 503. */
  get closing(): AbortSignal {
    return this.writesClosed.signal;
  }

  private checkWritable(): void {
    if (this.writesClosed.signal.aborted) throw shuttingDown(': adapter writes are refused');
  }

  private async resync(): Promise<void> {
    try {
      await this.sync(false);
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, 'could not reconcile with the adapter index');
    }
  }

  private async onChange(change: StoreChange | null): Promise<void> {
    if (change === null) return this.resync();
    if (this.writing.has(change.task) && this.writing.get(change.task) === change.version) return;
    if (change.version === null) {
      this.begin(change.task);
      this.drop(change.task);
      this.log.info({ task: change.task }, 'adapter deleted on another replica');
    } else if (this.meta.get(change.task)?.version === change.version) {
      // Already held (this replica's own upload, or the same files uploaded again elsewhere): still
      // a change, so older loads in flight lose; an upload elsewhere brings its time.
      this.begin(change.task);
      this.orphans.delete(change.task);
      const held = this.meta.get(change.task)!;
      if (change.createdAt && change.createdAt !== held.createdAt) this.meta.set(change.task, { ...held, createdAt: change.createdAt });
    } else await this.loadAnnounced(change.task, change.version, RETRY_FIRST_MS);
  }

  /**
   * Loads an adapter another replica stored. One that fails for want of the store is tried again
   * after `retryMs` (see `retrying`); one whose files are bad is dropped (refresh).
   */
  private async loadAnnounced(task: string, version: string, retryMs: number): Promise<void> {
    const loading = this.refresh(task);
    const n = this.lastChange.get(task)!; // refresh's own change: begin() ran before its first await
    try {
      const outcome = await this.track(task, loading);
      const message = { held: 'adapter changed on another replica', dropped: 'adapter deleted on another replica', superseded: 'adapter change from another replica superseded by a later one' }[outcome];
      this.log.info({ task, version, held: this.meta.get(task)?.version ?? null }, message);
    } catch (e) {
      this.log.warn({ err: (e as Error).message, task, version }, 'could not apply an adapter change');
      const storeAway = e instanceof ServerError && e.code === 'store_unavailable';
      // A later change has the last word (and ended any retry); so does shutting down.
      if (!storeAway || !this.isLatest(task, n) || this.stopped || this.writesClosed.signal.aborted) return;
      const timer = setTimeout(() => void this.loadAnnounced(task, version, Math.min(2 * retryMs, RETRY_MAX_MS)), retryMs);
      timer.unref();
      this.retrying.set(task, { error: e, timer });
    }
  }

  /**
   * Notes an announced adapter's load in flight, so that a request for a task this replica does not
   * know yet waits for it rather than getting 404 for the second or more a large adapter takes to load.
   */
  private track<T>(task: string, applying: Promise<T>): Promise<T> {
    this.announced.set(
      task,
      applying.then(
        () => undefined,
        (e: unknown) => e,
      ),
    );
    return applying;
  }

  /**
   * The task's metadata, once the announced loads of a task not held here have settled (one can
   * follow another: each is waited for). Bounded by the store's command timeout and the parse.
   */
  private async known(task: string): Promise<StoredMeta | undefined> {
    if (!TASK_ID.test(task)) return undefined;
    let failure: unknown;
    // track()'s clean-up runs before a waiter resumes: the loop ends once none is in flight.
    for (let p = this.announced.get(task); p && !this.meta.has(task); p = this.announced.get(task)) failure = await p;
    const m = this.meta.get(task);
    // The load failed for a reason other than its files (the store is away, the server is
    // shutting down): that is what to answer, not that the task does not exist.
    if (!m && failure instanceof ServerError) throw failure;
    const retry = this.retrying.get(task);
    if (!m && retry) throw retry.error;
    return m;
  }

  /**
   * Applies what the store holds for `task` now, unless a later change started while it was read.
   * Loads eagerly: the first request after an announcement should not pay for the decode.
   */
  private async refresh(task: string): Promise<'held' | 'dropped' | 'superseded'> {
    const n = this.begin(task);
    const stored = await this.store.load(task);
    if (!this.isLatest(task, n)) return 'superseded';
    if (!stored) {
      this.drop(task);
      return 'dropped';
    }
    let adapter: Adapter;
    try {
      adapter = await this.parse(task, stored.files, stored.meta.createdAt);
    } catch (e) {
      // Bad files: the store's version cannot be served. Anything else (the parser stopped, a
      // worker that died twice) says nothing of the files: keep what is held.
      if (e instanceof FormatError && this.isLatest(task, n)) this.drop(task);
      throw e;
    }
    // The parse ran off the event loop: a change that began meanwhile has the last word.
    if (!this.isLatest(task, n)) return 'superseded';
    this.hold(adapter);
    return 'held';
  }

  /** Parses and validates against the base model, off the event loop unless the files are small. */
  parse(task: string, files: AdapterFiles, createdAt?: string): Promise<Adapter> {
    return this.parser.parse(task, files, createdAt);
  }

  /** Validates fully, then stores, then swaps: an invalid upload changes nothing. */
  async upload(task: string, files: AdapterFiles): Promise<{ info: AdapterInfo; created: boolean }> {
    this.checkWritable();
    if (task === BASE_TASK) throw new ServerError('reserved_task', "'base' is the frozen model and cannot be replaced");
    if (!TASK_ID.test(task)) throw new ServerError('invalid_request', `task id must match ${TASK_ID.source}`);
    let adapter: Adapter;
    try {
      adapter = await this.parse(task, files);
    } catch (e) {
      if (e instanceof FormatError) throw new ServerError('invalid_adapter', `${e.code}: ${e.message}`);
      throw e;
    }
    this.checkWritable(); // the parse took time: the server may be shutting down now
    const meta = metaOf(adapter);
    const n = this.begin(task);
    this.writing.set(task, adapter.version);
    const { replaced } = await this.store.save({ meta, files }).finally(() => this.writing.delete(task));
    // Another change to the task arrived during the save: the store's order decides, so read it back.
    if (this.isLatest(task, n)) this.hold(adapter);
    else await this.refresh(task);
    this.log.info({ task, version: adapter.version, peftType: adapter.peftType, replaced }, 'adapter stored');
    return { info: info(meta), created: !replaced };
  }

  async remove(task: string): Promise<void> {
    this.checkWritable();
    if (task === BASE_TASK) throw new ServerError('reserved_task', "'base' is the frozen model and cannot be deleted");
    if (!(await this.known(task))) throw new ServerError('task_not_found', `no adapter named '${task.slice(0, 80)}'`);
    this.checkWritable();
    const n = this.begin(task);
    this.writing.set(task, null);
    await this.store.remove(task).finally(() => this.writing.delete(task));
    if (this.isLatest(task, n)) this.drop(task);
    else await this.refresh(task);
    this.log.info({ task }, 'adapter deleted');
  }

  /** Every registered adapter, in task-id order. */
  list(): AdapterInfo[] {
    return this.page(undefined, Infinity).adapters;
  }

  /**
   * At most `limit` adapters whose task id sorts after `after`, in code-unit order (the order the
   * cursor compares in), and whether more follow.
   */
  page(after: string | undefined, limit: number): { adapters: AdapterInfo[]; hasMore: boolean } {
    const tasks = [...this.meta.keys()].filter((t) => after === undefined || t > after).sort();
    return { adapters: tasks.slice(0, limit).map((t) => info(this.meta.get(t)!)), hasMore: tasks.length > limit };
  }

  get size(): number {
    return this.meta.size;
  }

  /** Registered here now (no wait for a load in flight). */
  has(task: string): boolean {
    return this.meta.has(task);
  }

  async describe(task: string): Promise<AdapterInfo> {
    const m = await this.known(task);
    if (!m) throw new ServerError('task_not_found', `no adapter named '${task.slice(0, 80)}'`);
    return info(m);
  }

  async resolve(task: string): Promise<ResolvedTask> {
    if (task === BASE_TASK) return { task, version: this.baseVersion, adapter: null, spec: DEFAULT_SPEC };
    const m = await this.known(task);
    if (!m) throw new ServerError('task_not_found', `no task named '${task.slice(0, 80)}'`);
    const adapter = this.cache.get(task) ?? (await this.loadInto(task, m));
    return { task, version: adapter.version, adapter, spec: adapter.spec };
  }

  /** Reloads an evicted adapter from the store; concurrent requests share one load. */
  private loadInto(task: string, m: StoredMeta): Promise<Adapter> {
    // Keyed by version: a request admitted after a replacement must not join a reload of the old one.
    const key = `${task}@${m.version}`;
    let p = this.loading.get(key);
    if (!p) {
      p = (async () => {
        const stored = await this.store.load(task);
        if (!stored) {
          // An orphan evicted from memory after the store lost it: nobody can serve it any more.
          if (this.orphans.has(task) && this.meta.get(task) === m) this.drop(task);
          throw new ServerError('task_not_found', `no task named '${task}'`);
        }
        let adapter: Adapter;
        try {
          adapter = await this.parse(task, stored.files, m.createdAt);
        } catch (e) {
          if (!(e instanceof FormatError)) throw e;
          // Stored by an older, laxer version: refuse it here too rather than fail the request late.
          this.log.warn({ task, reason: `${e.code}: ${e.message}` }, 'stored adapter is invalid: dropped');
          if (this.meta.get(task) === m) this.drop(task);
          throw new ServerError('task_not_found', `no task named '${task}'`);
        }
        if (this.meta.get(task)?.version === adapter.version) this.cache.set(task, adapter, this.cost(adapter));
        return adapter;
      })().finally(() => this.loading.delete(key));
      this.loading.set(key, p);
    }
    return p;
  }
}

