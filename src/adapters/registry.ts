import type { Logger } from 'pino';
import { FormatError, ServerError } from '../errors.js';
import type { BaseModel } from '../model/base-model.js';
import { parseAdapter, type Adapter, type AdapterFiles } from './format.js';
import { LruCache } from './lru.js';
import type { AdapterStore, StoreChange, StoredMeta } from './store.js';
import { DEFAULT_SPEC, type TaskSpec } from './task-spec.js';

export { readAdapterFolder } from './fs-store.js';

export const TASK_ID = /^[a-z0-9][a-z0-9._-]{0,63}$/;
export const BASE_TASK = 'base';

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
  private readonly loading = new Map<string, Promise<Adapter>>();
  readonly baseVersion: string;
  private inSync = false;

  constructor(
    readonly model: BaseModel,
    private readonly store: AdapterStore,
    private readonly log: Logger,
    cacheBytes = 256 * 1024 * 1024,
  ) {
    this.baseVersion = `base-${model.hash.slice(0, 12)}`;
    this.cache = new LruCache(cacheBytes);
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

  /**
   * Reads the store's index. `validate`: parse every adapter now (startup of a folder of adapters,
   * where files may have been copied in by hand); a bad one is logged with its reason and skipped.
   */
  async sync(validate: boolean): Promise<{ loaded: string[]; skipped: { task: string; reason: string }[] }> {
    const loaded: string[] = [];
    const skipped: { task: string; reason: string }[] = [];
    const fresh = new Map<string, StoredMeta>();
    for (const m of await this.store.index()) {
      try {
        if (!TASK_ID.test(m.task) || m.task === BASE_TASK) throw new FormatError('invalid_task_id', `'${m.task}' is not a valid task id`);
        if (validate || !m.version) {
          const stored = await this.store.load(m.task);
          if (!stored) continue;
          const adapter = this.parse(m.task, stored.files, m.createdAt);
          fresh.set(m.task, metaOf(adapter));
          this.cache.set(m.task, adapter, adapter.residentBytes);
        } else fresh.set(m.task, m);
        loaded.push(m.task);
      } catch (e) {
        const reason = e instanceof FormatError ? `${e.code}: ${e.message}` : (e as Error).message;
        skipped.push({ task: m.task, reason });
        this.log.warn({ task: m.task, reason }, 'adapter skipped');
      }
    }
    for (const [task, m] of this.meta) if (fresh.get(task)?.version !== m.version) this.cache.delete(task);
    this.meta.clear();
    for (const [task, m] of fresh) this.meta.set(task, m);
    this.inSync = true;
    this.log.info({ store: this.store.name, loaded: loaded.length, skipped: skipped.length }, 'adapter registry synchronised');
    return { loaded, skipped };
  }

  /** Follows changes other replicas make through a shared store. */
  follow(): void {
    this.store.watch?.((change) => void this.onChange(change));
  }

  private async onChange(change: StoreChange | null): Promise<void> {
    try {
      if (change === null) {
        await this.sync(false);
        return;
      }
      if (change.version === null) {
        this.meta.delete(change.task);
        this.cache.delete(change.task);
      } else if (this.meta.get(change.task)?.version !== change.version) {
        // Load eagerly: the first request after the announcement should not pay for the decode.
        this.cache.delete(change.task);
        const stored = await this.store.load(change.task);
        if (!stored) return;
        const adapter = this.parse(change.task, stored.files, stored.meta.createdAt);
        this.meta.set(change.task, metaOf(adapter));
        this.cache.set(change.task, adapter, adapter.residentBytes);
      }
      this.log.info({ task: change.task, version: change.version }, 'adapter changed on another replica');
    } catch (e) {
      this.log.warn({ err: (e as Error).message, task: change?.task }, 'could not apply an adapter change');
    }
  }

  parse(task: string, files: AdapterFiles, createdAt?: string): Adapter {
    return parseAdapter(task, files, { config: this.model.config, biases: this.model.tensors.biases }, createdAt);
  }

  /** Validates fully, then stores, then swaps: an invalid upload changes nothing. */
  async upload(task: string, files: AdapterFiles): Promise<{ info: AdapterInfo; created: boolean }> {
    if (task === BASE_TASK) throw new ServerError('reserved_task', "'base' is the frozen model and cannot be replaced");
    if (!TASK_ID.test(task)) throw new ServerError('invalid_request', `task id must match ${TASK_ID.source}`);
    let adapter: Adapter;
    try {
      adapter = this.parse(task, files);
    } catch (e) {
      if (e instanceof FormatError) throw new ServerError('invalid_adapter', `${e.code}: ${e.message}`);
      throw e;
    }
    const meta = metaOf(adapter);
    const { replaced } = await this.store.save({ meta, files });
    this.meta.set(task, meta);
    this.cache.set(task, adapter, adapter.residentBytes);
    this.log.info({ task, version: adapter.version, peftType: adapter.peftType, replaced }, 'adapter stored');
    return { info: info(meta), created: !replaced };
  }

  async remove(task: string): Promise<void> {
    if (task === BASE_TASK) throw new ServerError('reserved_task', "'base' is the frozen model and cannot be deleted");
    if (!this.meta.has(task)) throw new ServerError('task_not_found', `no adapter named '${task.slice(0, 80)}'`);
    await this.store.remove(task);
    this.meta.delete(task);
    this.cache.delete(task);
    this.log.info({ task }, 'adapter deleted');
  }

  list(): AdapterInfo[] {
    return [...this.meta.values()].map(info).sort((a, b) => a.task.localeCompare(b.task));
  }

  get size(): number {
    return this.meta.size;
  }

  describe(task: string): AdapterInfo {
    const m = TASK_ID.test(task) ? this.meta.get(task) : undefined;
    if (!m) throw new ServerError('task_not_found', `no adapter named '${task.slice(0, 80)}'`);
    return info(m);
  }

  async resolve(task: string): Promise<ResolvedTask> {
    if (task === BASE_TASK) return { task, version: this.baseVersion, adapter: null, spec: DEFAULT_SPEC };
    const m = TASK_ID.test(task) ? this.meta.get(task) : undefined;
    if (!m) throw new ServerError('task_not_found', `no task named '${task.slice(0, 80)}'`);
    const adapter = this.cache.get(task) ?? (await this.loadInto(task, m));
    return { task, version: adapter.version, adapter, spec: adapter.spec };
  }

  /** Reloads an evicted adapter from the store; concurrent requests share one load. */
  private loadInto(task: string, m: StoredMeta): Promise<Adapter> {
    let p = this.loading.get(task);
    if (!p) {
      p = (async () => {
        const stored = await this.store.load(task);
        if (!stored) throw new ServerError('task_not_found', `no task named '${task}'`);
        const adapter = this.parse(task, stored.files, m.createdAt);
        if (this.meta.get(task)?.version === adapter.version) this.cache.set(task, adapter, adapter.residentBytes);
        return adapter;
      })().finally(() => this.loading.delete(task));
      this.loading.set(task, p);
    }
    return p;
  }
}

