import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { ServerError } from '../errors.js';
import { joinBytes } from './join-bytes.js';
import type { AdapterStore, StoreChange, StoredAdapter, StoredMeta } from './store.js';

/**
 * Weights above this are stored as fields `weights.0`, `weights.1`… of this size, with their count
 * in `weights.chunks`: ioredis copies each bulk reply into one buffer on the event loop once it has
 * all of it, and a 44 MB one stalled a replica following an upload for 320 ms. Smaller weights keep
 * the one `weights` field, the layout replicas of earlier builds read.
 */
const WEIGHTS_CHUNK = 1 << 20;

function weightFields(weights: Buffer): Record<string, Buffer> {
  if (weights.length <= WEIGHTS_CHUNK) return { weights };
  const fields: Record<string, Buffer> = {};
  let n = 0;
  for (let at = 0; at < weights.length; at += WEIGHTS_CHUNK) fields[`weights.${n++}`] = weights.subarray(at, at + WEIGHTS_CHUNK);
  fields['weights.chunks'] = Buffer.from(String(n));
  return fields;
}

/** The weights of a stored hash, joined when chunked; null when a chunk is missing. */
async function joinWeights(files: Record<string, Buffer>): Promise<Buffer | null> {
  if (files.weights) return files.weights;
  const n = Number(files['weights.chunks']?.toString());
  if (!Number.isSafeInteger(n) || n < 1) return null;
  const chunks = Array.from({ length: n }, (_, i) => files[`weights.${i}`]);
  return chunks.every(Boolean) ? joinBytes(chunks) : null;
}

/** A staged save's files expire if it never commits (the replica died mid-save). */
const STAGED_TTL_S = 3600;

/**
 * Makes staged files a task's, atomically (a script runs alone): the files replaced, the index
 * entry written and the change announced, as one step. Staged files that are not all there (Redis
 * restarted, evicted the staging key or failed over mid-save, and a later field made the key anew)
 * fail the save, and are dropped, rather than index an adapter with missing files.
 * KEYS: index, files, staged. ARGV: task, meta, channel, change, number of fields staged.
 * Returns 1 when it replaced an adapter.
 */
const COMMIT_STAGED = `
if redis.call('HLEN', KEYS[3]) ~= tonumber(ARGV[5]) then
  redis.call('DEL', KEYS[3])
  return redis.error_reply('the staged adapter files are incomplete: the store lost some of them during the save')
end
local replaced = redis.call('HEXISTS', KEYS[1], ARGV[1])
redis.call('RENAME', KEYS[3], KEYS[2])
redis.call('PERSIST', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return replaced`;

/**
 * Adapters in Redis, shared by every replica. Files are binary hash fields. A save stages the files
 * under a key of its own, then one script swaps them in, updates the index and announces the
 * change on a channel; a delete is one MULTI that does the same. So a replica sees the old version
 * or the new one and hears of it at once. Commands fail fast while Redis is
 * away (no offline queue): admin writes then get 503, and serving goes on from memory.
 */
export class RedisStore implements AdapterStore {
  readonly name = 'redis';
  private readonly client: Redis;
  private subscriber: Redis | null = null;
  private readonly indexKey: string;
  private readonly channel: string;
  private readonly epochKey: string;
  /** This process created the epoch: the registry in Redis was new (never seeded, or lost its data). */
  createdEpoch = false;
  /** A command timed out and no ping has been answered since. */
  private stalled = false;
  private closed = false;

  constructor(
    url: string,
    private readonly prefix: string,
    private readonly log: Logger,
    commandTimeoutMs = 10_000,
  ) {
    // A Redis that is connected but does not answer (paused, swapping, a long blocking command)
    // fails commands after commandTimeoutMs: writes answer 503 instead of hanging, and the store
    // reports itself degraded until Redis answers again.
    // No command is sent again after a reconnect: a staged field written anew after Redis lost the
    // staging key would make a key that never expires.
    const opts = { enableOfflineQueue: false, autoResendUnfulfilledCommands: false, maxRetriesPerRequest: 1, retryStrategy: (n: number) => Math.min(100 * n, 1000), lazyConnect: false, commandTimeout: commandTimeoutMs };
    this.client = new Redis(url, opts);
    this.client.on('error', (e) => this.log.debug({ err: e.message }, 'redis error'));
    this.indexKey = `${prefix}index`;
    this.channel = `${prefix}changes`;
    this.epochKey = `${prefix}epoch`;
  }

  private filesKey(task: string): string {
    return `${this.prefix}files:${task}`;
  }

  /** Resolves once connected (or rejects after `ms`), so startup can read the index. */
  async connect(ms = 5000): Promise<void> {
    if (this.client.status === 'ready') return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`redis did not answer within ${ms} ms`)), ms);
      this.client.once('ready', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private guard<T>(p: Promise<T>): Promise<T> {
    return p.then(
      (v) => {
        this.stalled = false;
        return v;
      },
      (e: Error) => {
        if (/timed out/i.test(e.message)) this.stall();
        throw new ServerError('store_unavailable', `the adapter store (redis) is unavailable: ${e.message}`);
      },
    );
  }

  /** A command timed out: degraded until a ping is answered (retried every 500 ms). */
  private stall(): void {
    if (this.stalled) return;
    this.stalled = true;
    let pinging = false;
    const probe = setInterval(() => {
      if (!this.stalled || this.closed) return clearInterval(probe);
      if (pinging) return;
      pinging = true;
      this.client.ping().then(
        () => (this.stalled = false),
        () => {},
      ).finally(() => (pinging = false));
    }, 500);
    probe.unref();
  }

  async index(): Promise<StoredMeta[]> {
    const all = await this.guard(this.client.hgetall(this.indexKey));
    return Object.values(all).map((v) => JSON.parse(v) as StoredMeta); // in no order: the registry sorts what it lists
  }

  async load(task: string): Promise<StoredAdapter | null> {
    const [meta, files] = await this.guard(Promise.all([this.client.hget(this.indexKey, task), this.client.hgetallBuffer(this.filesKey(task))]));
    if (!meta || !files.config) return null;
    const weights = await joinWeights(files);
    if (!weights) return null;
    return { meta: JSON.parse(meta), files: { config: files.config, weights, task: files.task } };
  }

  async save({ meta, files }: StoredAdapter): Promise<{ replaced: boolean }> {
    const fields: Record<string, Buffer> = { config: files.config, ...weightFields(files.weights) };
    if (files.task) fields.task = files.task;
    const change: StoreChange = { task: meta.task, version: meta.version, createdAt: meta.createdAt };
    // Staged field by field, each its own command: ioredis builds a command's bytes in one buffer,
    // and the whole upload in one MULTI was copied twice on the event loop. A save that fails
    // leaves no staged key behind for long (it expires).
    const staged = `${this.prefix}staged:${meta.task}:${randomBytes(6).toString('hex')}`;
    try {
      await this.guard(this.client.multi().hset(staged, 'config', fields.config).expire(staged, STAGED_TTL_S).exec());
      for (const [field, value] of Object.entries(fields)) if (field !== 'config') await this.guard(this.client.hset(staged, field, value));
      const replaced = await this.guard(this.client.eval(COMMIT_STAGED, 3, this.indexKey, this.filesKey(meta.task), staged, meta.task, JSON.stringify(meta), this.channel, JSON.stringify(change), Object.keys(fields).length));
      return { replaced: replaced === 1 };
    } catch (e) {
      void this.client.del(staged).catch(() => {});
      throw e;
    }
  }

  async remove(task: string): Promise<boolean> {
    const change: StoreChange = { task, version: null };
    const results = await this.guard(this.client.multi().hdel(this.indexKey, task).del(this.filesKey(task)).publish(this.channel, JSON.stringify(change)).exec());
    return results?.[0]?.[1] === 1;
  }

  async epoch(): Promise<string> {
    if ((await this.guard(this.client.set(this.epochKey, randomBytes(8).toString('hex'), 'NX'))) === 'OK') this.createdEpoch = true;
    const epoch = await this.guard(this.client.get(this.epochKey));
    if (!epoch) throw new ServerError('store_unavailable', 'the adapter store (redis) lost its epoch key while it was read');
    return epoch;
  }

  watch(onChange: (change: StoreChange | null) => void): void {
    // No command timeout on the subscriber: it waits for messages, and reconnects on its own.
    const sub = this.client.duplicate({ enableOfflineQueue: true, maxRetriesPerRequest: null, commandTimeout: undefined });
    this.subscriber = sub;
    sub.on('error', (e) => this.log.debug({ err: e.message }, 'redis subscriber error'));
    sub.on('message', (_channel: string, message: string) => {
      try {
        onChange(JSON.parse(message) as StoreChange);
      } catch {
        this.log.warn({ message }, 'ignored a malformed change message');
      }
    });
    // Every (re)subscription may have missed messages: resynchronise from the index.
    sub.on('ready', () => {
      void sub.subscribe(this.channel).then(() => onChange(null));
    });
    this.client.on('ready', () => onChange(null));
  }

  healthy(): boolean {
    return !this.stalled && this.client.status === 'ready' && (this.subscriber === null || this.subscriber.status === 'ready');
  }

  async close(): Promise<void> {
    this.closed = true;
    this.subscriber?.disconnect();
    this.client.disconnect();
  }
}
