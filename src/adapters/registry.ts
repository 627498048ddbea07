import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { FormatError, ServerError } from '../errors.js';
import type { BaseModel } from '../model/base-model.js';
import { DEFAULT_SPEC, type TaskSpec } from './task-spec.js';
import { parseAdapter, type Adapter, type AdapterFiles } from './format.js';

export const TASK_ID = /^[a-z0-9][a-z0-9._-]{0,63}$/;
export const BASE_TASK = 'base';

/** What a request is pinned to at admission: the adapter version it will run on to the end. */
export interface ResolvedTask {
  task: string;
  version: string;
  adapter: Adapter | null;
  spec: TaskSpec;
}

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

/** Task id → current adapter version. Swapping an entry is one Map.set: requests already pinned keep theirs. */
export class Registry {
  private readonly adapters = new Map<string, Adapter>();
  readonly baseVersion: string;

  constructor(
    private readonly model: BaseModel,
    private readonly log: Logger,
  ) {
    this.baseVersion = `base-${model.hash.slice(0, 12)}`;
  }

  /** Loads every adapter folder; a bad one is logged with its reason and skipped. */
  loadDirectory(dir: string): { loaded: string[]; skipped: { task: string; reason: string }[] } {
    const loaded: string[] = [];
    const skipped: { task: string; reason: string }[] = [];
    if (!existsSync(dir)) {
      this.log.warn({ dir }, 'adapters directory does not exist; serving the base model only');
      return { loaded, skipped };
    }
    for (const task of readdirSync(dir).sort()) {
      const path = join(dir, task);
      if (!statSync(path).isDirectory() || task.startsWith('.')) continue;
      try {
        if (!TASK_ID.test(task) || task === BASE_TASK) throw new FormatError('invalid_task_id', `folder name '${task}' is not a valid task id`);
        this.put(this.parse(task, readAdapterFolder(path)));
        loaded.push(task);
      } catch (e) {
        const reason = e instanceof FormatError ? `${e.code}: ${e.message}` : (e as Error).message;
        skipped.push({ task, reason });
        this.log.warn({ task, reason }, 'adapter skipped');
      }
    }
    this.log.info({ loaded: loaded.length, skipped: skipped.length }, 'adapters loaded');
    return { loaded, skipped };
  }

  parse(task: string, files: AdapterFiles): Adapter {
    return parseAdapter(task, files, { config: this.model.config, biases: this.model.tensors.biases });
  }

  put(adapter: Adapter): void {
    this.adapters.set(adapter.task, adapter);
  }

  delete(task: string): boolean {
    return this.adapters.delete(task);
  }

  get(task: string): Adapter | undefined {
    return this.adapters.get(task);
  }

  list(): Adapter[] {
    return [...this.adapters.values()].sort((a, b) => a.task.localeCompare(b.task));
  }

  resolve(task: string): ResolvedTask {
    if (task === BASE_TASK) return { task, version: this.baseVersion, adapter: null, spec: DEFAULT_SPEC };
    const adapter = TASK_ID.test(task) ? this.adapters.get(task) : undefined;
    if (!adapter) throw new ServerError('task_not_found', `no task named '${task.slice(0, 80)}'`);
    return { task, version: adapter.version, adapter, spec: adapter.spec };
  }
}
