/**
 * Peak memory of serving a checkpoint: starts the server binary on MODEL_DIR (first with an empty
 * graph cache, so the graph is built; then with the cached graph), asks for one generation so every
 * weight is touched, and reads the process's peak RSS (VmHWM) and its proportional set size (PSS:
 * pages mapped by both workers counted once, as they are in physical memory).
 *   MODEL_DIR=/tmp/llama-1b node dist/bench/load-memory.js [--workers 1,2]
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startServerProcess } from '../src/tools/server-process.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({ options: { workers: { type: 'string', default: '1,2' } } });
const modelDir = process.env.MODEL_DIR ?? 'models/demo-gpt2';
const MiB = (kb: number) => Math.round(kb / 1024);
const kb = (text: string, key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
const checkpointBytes = readdirSync(modelDir).filter((f) => f.endsWith('.safetensors')).reduce((n, f) => n + statSync(join(modelDir, f)).size, 0);

const rows: (string | number)[][] = [];
const cache = mkdtempSync(join(tmpdir(), 'sps-load-memory-'));
const adapters = mkdtempSync(join(tmpdir(), 'sps-no-adapters-'));
for (const workers of args.workers!.split(',')) {
  for (const graph of ['built', 'cached']) {
    if (graph === 'built') rmSync(cache, { recursive: true, force: true });
    const t0 = performance.now();
    const server = await startServerProcess({ MODEL_DIR: modelDir, CACHE_DIR: cache, ADAPTERS_DIR: adapters, WORKERS: workers });
    const startS = (performance.now() - t0) / 1000;
    const atStart = readFileSync(`/proc/${server.pid}/status`, 'utf8');
    const res = await fetch(`${server.url}/v1/tasks/base/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'In the beginning', max_tokens: 4, temperature: 0 }) });
    if (res.status !== 200) throw new Error(`generate: ${res.status} ${await res.text()}`);
    // Every worker touches its weights: requests go to the least-loaded lane, so send one per worker at once.
    await Promise.all(Array.from({ length: Number(workers) }, () => fetch(`${server.url}/v1/tasks/base/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'ocean', max_tokens: 4, temperature: 0 }) })));
    const status = readFileSync(`/proc/${server.pid}/status`, 'utf8');
    const smaps = readFileSync(`/proc/${server.pid}/smaps_rollup`, 'utf8');
    rows.push([workers, graph, startS.toFixed(1), MiB(kb(atStart, 'VmHWM')), MiB(kb(status, 'VmHWM')), MiB(kb(status, 'VmRSS')), MiB(kb(smaps, 'Pss')), MiB(kb(smaps, 'Pss_Anon')), MiB(kb(smaps, 'Pss_File'))]);
    await server.stop();
  }
}
rmSync(cache, { recursive: true, force: true });
console.log(`\nserving ${modelDir} (${MiB(checkpointBytes / 1024)} MiB of safetensors): memory of the server process, MiB`);
printTable(['workers', 'graph', 'start s', 'peak RSS at ready', 'peak RSS after generating', 'RSS', 'PSS', 'PSS anon', 'PSS file'], rows);
