/**
 * Two sweeps for the charts: throughput against concurrency (8 tasks) for the three policies, and
 * throughput against the number of distinct tasks (1 to 256, 32 clients) for batching policies.
 *   npm run build && node dist/bench/sweeps.js [-- --requests 128]
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { benchPrompts, machineInfo, POLICIES, runWorkload, writeAdapters, type WorkloadRow } from './harness.js';
import { lineChart } from './svg-chart.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    requests: { type: 'string', default: '192' },
    tokens: { type: 'string', default: '32' },
    clients: { type: 'string', default: '1,4,16,64' },
    tasks: { type: 'string', default: '1,4,16,64,256' },
    fixtures: { type: 'string', default: 'test/fixtures' },
    out: { type: 'string', default: 'bench/results' },
  },
});
const work = mkdtempSync(join(tmpdir(), 'bench-sweep-'));
const prompts = benchPrompts(args.fixtures!, Number(args.requests));
const tokens = Number(args.tokens);

const concurrency: WorkloadRow[] = [];
const eight = writeAdapters(join(work, 'eight'), 8);
for (const policy of POLICIES) {
  for (const clients of args.clients!.split(',').map(Number)) {
    concurrency.push(await runWorkload({ policy, adapterDir: join(work, 'eight'), tasks: eight, clients, prompts, tokens }));
    console.error(`${policy.name}, ${clients} clients: ${concurrency.at(-1)!.tokPerS.toFixed(0)} tok/s`);
  }
}
const heterogeneity: WorkloadRow[] = [];
for (const n of args.tasks!.split(',').map(Number)) {
  const dir = join(work, `tasks-${n}`);
  const tasks = writeAdapters(dir, n);
  for (const policy of POLICIES.slice(1)) {
    heterogeneity.push(await runWorkload({ policy, adapterDir: dir, tasks, clients: 32, prompts, tokens }));
    console.error(`${policy.name}, ${n} tasks: ${heterogeneity.at(-1)!.tokPerS.toFixed(0)} tok/s`);
  }
}

const f = (x: number, d = 0) => x.toFixed(d);
console.log(`\nthroughput against concurrency: 8 tasks, ${prompts.length} requests × ${tokens} tokens`);
printTable(['policy', 'clients', 'gen tok/s', 'p50 ms', 'p99 ms', 'TTFT p50 ms'], concurrency.map((r) => [r.policy, r.clients, f(r.tokPerS), f(r.p50), f(r.p99), f(r.ttftP50)]));
console.log(`\nthroughput against distinct tasks: 32 clients, ${prompts.length} requests × ${tokens} tokens`);
printTable(['policy', 'tasks', 'gen tok/s', 'p50 ms', 'p99 ms', 'TTFT p50 ms'], heterogeneity.map((r) => [r.policy, r.tasks, f(r.tokPerS), f(r.p50), f(r.p99), f(r.ttftP50)]));

const series = (rows: WorkloadRow[], x: (r: WorkloadRow) => number) =>
  [...new Set(rows.map((r) => r.policy))].map((name) => ({ name, points: rows.filter((r) => r.policy === name).map((r) => [x(r), r.tokPerS] as [number, number]) }));
mkdirSync(args.out!, { recursive: true });
writeFileSync(join(args.out!, 'concurrency.svg'), lineChart({ title: 'Throughput against concurrency (8 tasks)', xLabel: 'concurrent clients', yLabel: 'generated tokens / s', series: series(concurrency, (r) => r.clients), logX: true }));
writeFileSync(join(args.out!, 'heterogeneity.svg'), lineChart({ title: 'Throughput against distinct tasks (32 clients)', xLabel: 'distinct tasks in the workload', yLabel: 'generated tokens / s', series: series(heterogeneity, (r) => r.tasks), logX: true }));
writeFileSync(join(args.out!, 'sweeps.json'), JSON.stringify({ machine: machineInfo(), requests: prompts.length, tokens, concurrency, heterogeneity }, null, 2) + '\n');
rmSync(work, { recursive: true, force: true });
