import type { AdapterFiles } from './format.js';

/** What a store keeps per task: the files as uploaded, and the facts listed without decoding them. */
export interface StoredMeta {
  task: string;
  version: string;
  peftType: string;
  kind: string;
  bytes: number;
  createdAt: string;
}

export interface StoredAdapter {
  meta: StoredMeta;
  files: AdapterFiles;
}

/** A change another replica made, announced to this one. */
export interface StoreChange {
  task: string;
  /** The new version, or null when the task was deleted. */
  version: string | null;
  /** When the new version was uploaded: the same files uploaded again are the same version, uploaded later. */
  createdAt?: string;
}

/**
 * Where adapters live beyond this process. Writes are atomic: a reader sees the old version or
 * the new one, never a mix. A store that other replicas share also announces their changes.
 */
export interface AdapterStore {
  readonly name: string;
  /** Every stored adapter's metadata. */
  index(): Promise<StoredMeta[]>;
  load(task: string): Promise<StoredAdapter | null>;
  /** Returns whether a previous version was replaced. */
  save(adapter: StoredAdapter): Promise<{ replaced: boolean }>;
  remove(task: string): Promise<boolean>;
  /** Shared stores: calls back on changes by any replica, and on reconnect (null: resynchronise all). */
  watch?(onChange: (change: StoreChange | null) => void): void;
  /**
   * Shared stores: an id of the store's current lifetime, created by the first replica that asks.
   * It changes only when the store lost its data (a Redis restarted without persistence).
   */
  epoch?(): Promise<string>;
  /** True once this process created the epoch: the shared store was new, never seeded. */
  readonly createdEpoch?: boolean;
  healthy(): boolean;
  close(): Promise<void>;
}
