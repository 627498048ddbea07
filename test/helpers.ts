import { cpSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { loadConfig } from '../src/config.js';
import { createServer, type Server } from '../src/server.js';
import type { RefCase } from '../bench/reference.js';

export { prefillLogits, refLogits, relErr, runPicked, type RefCase } from '../bench/reference.js';

/** The repository root, whether tests run from test/ or from dist/test/. */
export const ROOT = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!readdirHas(dir, 'package.json')) dir = dirname(dir);
  return dir;
})();

function readdirHas(dir: string, name: string): boolean {
  try {
    readFileSync(join(dir, name));
    return true;
  } catch {
    return false;
  }
}

export interface Reference {
  labels: string[];
  tokenizer: { text: string; ids: number[] }[];
  cases: RefCase[];
}

/** Copies of the project's shared ground truth kept in the repository (scripts/sync-fixtures.sh refreshes them). */
export const FIXTURES = join(ROOT, 'test', 'fixtures');
export const reference: Reference = JSON.parse(readFileSync(join(FIXTURES, 'reference', 'reference.json'), 'utf8'));
export const SUPPORTED = new Set([null, 'define-prefix', 'fortune-ptuning', 'kjv-prompt', 'pos-bitfit', 'pos-ia3', 'pos-lora', 'pos-prefix', 'pos-prompt', 'pos-ptuning']);

export function logSoftmax(x: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of x) max = Math.max(max, v);
  let sum = 0;
  for (const v of x) sum += Math.exp(v - max);
  const lse = max + Math.log(sum);
  return Float64Array.from(x, (v) => v - lse);
}

export async function startServer(env: Record<string, string> = {}): Promise<Server> {
  const config = loadConfig({
    MODEL_DIR: join(ROOT, 'models', 'demo-gpt2'),
    ADAPTERS_DIR: join(ROOT, 'adapters'),
    CACHE_DIR: join(ROOT, '.cache'),
    ...env,
  });
  const server = await createServer(config, pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }));
  await server.app.ready();
  return server;
}

/** A multipart/form-data body with one file part per entry, for inject(). */
export function multipart(files: Record<string, Buffer | Uint8Array>): { payload: Buffer; headers: Record<string, string> } {
  const boundary = `----sps${Math.random().toString(16).slice(2)}`;
  const parts: Buffer[] = [];
  for (const [name, data] of Object.entries(files)) {
    parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"; filename="${name}"\r\nContent-Type: application/octet-stream\r\n\r\n`));
    parts.push(Buffer.from(data));
    parts.push(Buffer.from('\r\n'));
  }
  parts.push(Buffer.from(`--${boundary}--\r\n`));
  return { payload: Buffer.concat(parts), headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } };
}

/** The files of a shipped adapter, by their upload names. */
export function adapterFiles(name: string): Record<string, Buffer> {
  const dir = join(ROOT, 'adapters', name);
  const out: Record<string, Buffer> = {
    'adapter_config.json': readFileSync(join(dir, 'adapter_config.json')),
    'adapter_model.safetensors': readFileSync(join(dir, 'adapter_model.safetensors')),
  };
  try {
    out['task.json'] = readFileSync(join(dir, 'task.json'));
  } catch {
    /* optional */
  }
  return out;
}

/** A fresh copy of the shipped adapters, so tests that write do not touch the repository. */
export function adaptersCopy(only?: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'sps-adapters-'));
  for (const name of readdirSync(join(ROOT, 'adapters'))) {
    if (!only || only.includes(name)) cpSync(join(ROOT, 'adapters', name), join(dir, name), { recursive: true });
  }
  return dir;
}
