import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FormatError } from '../errors.js';
import type { AdapterFiles } from './format.js';
import { LatestPerTask } from './latest-per-task.js';
import type { AdapterStore, StoredAdapter, StoredMeta } from './store.js';

const META = 'meta.json';

export function readAdapterFolder(dir: string): AdapterFiles {
  const file = (name: string) => join(dir, name);
  for (const name of ['adapter_config.json', 'adapter_model.safetensors']) {
    if (!existsSync(file(name))) throw new FormatError('missing_file', `${name} is missing`);
  }
  return {
    config: readFileSync(file('adapter_config.json')),
    weights: readFileSync(file('adapter_model.safetensors')),
    task: existsSync(file('task.json')) ? readFileSync(file('task.json')) : undefined,
  };
}

/** The same files, read off the event loop: the store's loads, which may be tens of megabytes. */
async function loadAdapterFolder(dir: string): Promise<AdapterFiles> {
  const read = (name: string) => readFile(join(dir, name)).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? undefined : Promise.reject(e)));
  const [config, weights, task] = await Promise.all(['adapter_config.json', 'adapter_model.safetensors', 'task.json'].map(read));
  if (!config) throw new FormatError('missing_file', 'adapter_config.json is missing');
  if (!weights) throw new FormatError('missing_file', 'adapter_model.safetensors is missing');
  return { config, weights, task };
}

/**
 * Adapters as folders of ADAPTERS_DIR, one per task, in Hugging Face PEFT layout. A save writes a
 * hidden temporary folder, then swaps it in with renames; a crash between the two renames is
 * repaired at the next start, so a task always has its old version or its new one. Files are
 * read and written off the event loop (flushed to disk before the rename makes them the task's);
 * the renames run in one turn of it, so two saves of a task never interleave there.
 */
export class FsStore implements AdapterStore {
  readonly name = 'filesystem';
  /** Per task, the last operation queued: a load's reads never see a save's or a remove's renames halfway. */
  private readonly busy = new LatestPerTask<unknown>();

  constructor(private readonly dir: string) {
    mkdirSync(dir, { recursive: true });
    this.recover();
  }

  /** Folders of a save interrupted between its renames: put the old version back. */
  private recover(): void {
    for (const entry of readdirSync(this.dir)) {
      const m = /^\.old-(.+)-[0-9a-f]{8}$/.exec(entry);
      if (m && !existsSync(join(this.dir, m[1]))) renameSync(join(this.dir, entry), join(this.dir, m[1]));
      else if (m || entry.startsWith('.tmp-')) rmSync(join(this.dir, entry), { recursive: true, force: true });
    }
  }

  /** Task folders with their metadata; folders without meta.json (copied in by hand) get it on first load. */
  async index(): Promise<StoredMeta[]> {
    const out: StoredMeta[] = [];
    for (const task of readdirSync(this.dir).sort()) {
      if (task.startsWith('.') || !statSync(join(this.dir, task)).isDirectory()) continue;
      const meta = this.readMeta(task);
      out.push(meta ?? { task, version: '', peftType: '', kind: '', bytes: 0, createdAt: statSync(join(this.dir, task)).mtime.toISOString() });
    }
    return out;
  }

  private readMeta(task: string): StoredMeta | null {
    try {
      return JSON.parse(readFileSync(join(this.dir, task, META), 'utf8')) as StoredMeta;
    } catch {
      return null;
    }
  }

  /** Runs `op` after every earlier operation on `task` has settled. */
  private exclusive<T>(task: string, op: () => Promise<T>): Promise<T> {
    const result = (this.busy.get(task) ?? Promise.resolve()).then(op);
    this.busy.set(task, result.catch(() => undefined));
    return result;
  }

  load(task: string): Promise<StoredAdapter | null> {
    return this.exclusive(task, () => this.read(task));
  }

  save(adapter: StoredAdapter): Promise<{ replaced: boolean }> {
    return this.exclusive(adapter.meta.task, () => this.write(adapter));
  }

  remove(task: string): Promise<boolean> {
    return this.exclusive(task, () => this.delete(task));
  }

  private async read(task: string): Promise<StoredAdapter | null> {
    const dir = join(this.dir, task);
    if (!existsSync(dir)) return null;
    const files = await loadAdapterFolder(dir);
    const meta = this.readMeta(task) ?? { task, version: '', peftType: '', kind: '', bytes: 0, createdAt: statSync(dir).mtime.toISOString() };
    return { meta, files };
  }

  private async write({ meta, files }: StoredAdapter): Promise<{ replaced: boolean }> {
    const suffix = randomBytes(4).toString('hex');
    const tmp = join(this.dir, `.tmp-${meta.task}-${suffix}`);
    await mkdir(tmp);
    const write = (name: string, data: Uint8Array | string) => writeFile(join(tmp, name), data, { flush: true });
    try {
      await Promise.all([
        write('adapter_config.json', files.config),
        write('adapter_model.safetensors', files.weights),
        files.task && write('task.json', files.task),
        write(META, JSON.stringify(meta, null, 2)),
      ]);
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    }
    const target = join(this.dir, meta.task);
    const replaced = existsSync(target);
    const old = join(this.dir, `.old-${meta.task}-${suffix}`);
    if (replaced) renameSync(target, old);
    renameSync(tmp, target);
    if (replaced) await rm(old, { recursive: true, force: true });
    return { replaced };
  }

  private async delete(task: string): Promise<boolean> {
    const target = join(this.dir, task);
    if (!existsSync(target)) return false;
    // Rename first: the task disappears atomically, and the files go after.
    const gone = join(this.dir, `.tmp-${task}-${randomBytes(4).toString('hex')}`);
    renameSync(target, gone);
    await rm(gone, { recursive: true, force: true });
    return true;
  }

  healthy(): boolean {
    return true;
  }

  async close(): Promise<void> {}
}
