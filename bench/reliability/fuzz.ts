/**
 * The request fuzzer at full size: FUZZ_COUNT (10,000) generated requests over every route against a
 * server process on loopback, then checks the process is alive and healthy. Prints a table and every
 * contract break with its seed and index (replay: the same FUZZ_SEED draws the same requests).
 *   node dist/bench/reliability/fuzz.js     # FUZZ_COUNT=10000 FUZZ_SEED=1 FUZZ_MAX_TEXT=20000 FUZZ_ROUTER_EDGE=1
 */
import { mkdtempSync, cpSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { machineInfo, rssBytes, startServerProcess } from '../harness.js';
import { fuzz } from './requests.js';

const count = Number(process.env.FUZZ_COUNT ?? 10_000);
const seed = Number(process.env.FUZZ_SEED ?? 1);
const maxText = Number(process.env.FUZZ_MAX_TEXT ?? 20_000);
const adapters = mkdtempSync(join(tmpdir(), 'sps-fuzz-'));
cpSync('adapters', adapters, { recursive: true });
const server = await startServerProcess({ ADMIN_TOKEN: 'fuzz-admin', ADAPTERS_DIR: adapters, LOG_LEVEL: 'info', MAX_ADAPTER_BYTES: String(4 * 2 ** 20) });
const rss0 = rssBytes(server.pid);
const t0 = performance.now();
const report = await fuzz(server.url, { adminToken: 'fuzz-admin', maxText, maxTokens: 64, count, seed, concurrency: 8, routerEdgeCases: process.env.FUZZ_ROUTER_EDGE !== '0' });
const seconds = (performance.now() - t0) / 1000;
const alive = server.child.exitCode === null;
const health = alive ? (await fetch(`${server.url}/healthz`).catch(() => null))?.status ?? 0 : 0;
const rss1 = alive ? rssBytes(server.pid) : NaN;
await server.stop();
const fivexx = Object.entries(report.statuses).filter(([s]) => Number(s) >= 500 || Number(s) === 0).reduce((n, [, c]) => n + c, 0);
writeFileSync('bench/results/fuzz.json', JSON.stringify({ machine: machineInfo(), count, seed, maxText, seconds, alive, health, rssMiB: [rss0 / 2 ** 20, rss1 / 2 ** 20], ...report }, null, 2));
console.log('| requests | seed | seconds | statuses | ≥ 500 or no answer | contract breaks | process alive, /healthz |');
console.log('| ---: | ---: | ---: | --- | ---: | ---: | --- |');
console.log(`| ${report.sent} | ${seed} | ${seconds.toFixed(0)} | ${Object.entries(report.statuses).map(([s, n]) => `${s}: ${n}`).join(', ')} | ${fivexx} | ${report.problems.length} | ${alive ? 'yes' : 'NO'}, ${health} |`);
for (const p of report.problems.slice(0, 30)) console.log(`#${p.index}: ${p.problem}\n    ${p.request}`);
