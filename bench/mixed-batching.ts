/**
 * Mixed-task batching against its alternatives, on one fixed workload: 512 generation requests,
 * 32 new tokens each, 32 concurrent clients, over real HTTP (streamed, for time to first token).
 *   (a) one request at a time   (b) batches of one task only   (c) mixed-task batching
 * each at 1, 8 and 64 distinct tasks. Also: resident bytes per adapter and RSS with 1,000 adapters.
 *   npm run bench:mixed [-- --requests 512 --clients 32]
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { benchPrompts, machineInfo, POLICIES, rssBytes, runWorkload, startServerProcess, writeAdapters, type WorkloadRow } from './harness.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    requests: { type: 'string', default: '512' },
    clients: { type: 'string', default: '32' },
    tokens: { type: 'string', default: '32' },
    tasks: { type: 'string', default: '1,8,64' },
    adapters: { type: 'string', default: '1000' },
    fixtures: { type: 'string', default: 'test/fixtures' },
    out: { type: 'string', default: 'bench/results/mixed-batching.json' },
  },
});
const REQUESTS = Number(args.requests);
const CLIENTS = Number(args.clients);
const TOKENS = Number(args.tokens);
const TASK_COUNTS = args.tasks!.split(',').map(Number);
const work = mkdtempSync(join(tmpdir(), 'bench-mixed-'));

const prompts = benchPrompts(args.fixtures!, REQUESTS);
const rows: WorkloadRow[] = [];
for (const n of TASK_COUNTS) {
  const dir = join(work, `tasks-${n}`);
  const tasks = writeAdapters(dir, n);
  for (const policy of POLICIES) {
    const row = await runWorkload({ policy, adapterDir: dir, tasks, clients: CLIENTS, prompts, tokens: TOKENS });
    rows.push(row);
    console.error(`${policy.name}, ${n} tasks: ${row.tokPerS.toFixed(0)} tok/s`);
  }
}

const f = (x: number, d = 1) => x.toFixed(d);
console.log('\nKV copied B/token: cache bytes the workers copied per generated token (a prompt written into a free slot, compactions); decode steps append in place and copy nothing else. A token\'s own keys and values take 8 KiB.');
console.log(`\nmixed-task batching: ${REQUESTS} requests × ${TOKENS} new tokens, ${CLIENTS} concurrent clients, streamed over HTTP; ${machineInfo().cpu}, ${machineInfo().cores} cores\n`);
printTable(
  ['policy', 'tasks', 'req/s', 'gen tok/s', 'p50 ms', 'p99 ms', 'TTFT p50 ms', 'TTFT p99 ms', 'healthz p50 ms', 'healthz p99 ms', 'KV copied B/token'],
  rows.map((r) => [r.policy, r.tasks, f(r.reqPerS, 2), f(r.tokPerS, 0), f(r.p50, 0), f(r.p99, 0), f(r.ttftP50, 0), f(r.ttftP99, 0), f(r.healthP50), f(r.healthP99), f(r.kvBytesPerToken, 0)]),
);
const tput = (p: string, n: number) => rows.find((r) => r.policy.startsWith(p) && r.tasks === n)?.tokPerS ?? NaN;
console.log('\nratios');
printTable(
  ['tasks', '(c) / (a)', '(c) / (b)', '(c) at N tasks / (c) at 1 task'],
  TASK_COUNTS.map((n) => [n, f(tput('(c)', n) / tput('(a)', n), 2), f(tput('(c)', n) / tput('(b)', n), 2), f(tput('(c)', n) / tput('(c)', TASK_COUNTS[0]), 2)]),
);

// Memory: what an adapter costs resident, and a server holding 1,000 of them.
const memory: Record<string, number> = {};
if (Number(args.adapters) > 0) {
  const few = join(work, 'few');
  const many = join(work, 'many');
  writeAdapters(few, 7);
  writeAdapters(many, Number(args.adapters));
  const small = await startServerProcess({ ADAPTERS_DIR: few });
  memory.rss7 = rssBytes(small.pid);
  await small.stop();
  const big = await startServerProcess({ ADAPTERS_DIR: many });
  memory.rssMany = rssBytes(big.pid);
  await big.stop();
  memory.perAdapter = (memory.rssMany - memory.rss7) / (Number(args.adapters) - 7);
  console.log('\nmemory');
  printTable(['adapter kind', 'resident tensor bytes'], [
    ['prompt tuning (20 × 256)', 20 * 256 * 4],
    ['P-tuning (20 × 256)', 20 * 256 * 4],
    ['prefix tuning (16 × 4·2·256)', 16 * 2048 * 4],
    ['BitFit (all 25 bias vectors)', 11520 * 4],
  ]);
  console.log(`RSS with 7 adapters: ${(memory.rss7 / 2 ** 20).toFixed(1)} MiB; with ${args.adapters}: ${(memory.rssMany / 2 ** 20).toFixed(1)} MiB; ${(memory.perAdapter / 1024).toFixed(1)} KiB per added adapter`);
}
mkdirSync(join(args.out!, '..'), { recursive: true });
writeFileSync(args.out!, JSON.stringify({ machine: machineInfo(), requests: REQUESTS, clients: CLIENTS, tokens: TOKENS, rows, memory }, null, 2) + '\n');
rmSync(work, { recursive: true, force: true });
