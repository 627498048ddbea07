/**
 * Mixed-task batching against its alternatives, on one fixed workload: 512 generation requests,
 * 32 new tokens each, 32 concurrent clients, over real HTTP (streamed, for time to first token).
 *   (a) one request at a time   (b) batches of one task only   (c) mixed-task batching
 * each at 1, 8 and 64 distinct tasks. Also: resident bytes per adapter and RSS with 1,000 adapters.
 *   npm run bench:mixed [-- --requests 512 --clients 32]
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { healthProbe, machineInfo, percentile, rssBytes, startServerProcess, streamGenerate, writeAdapters } from './harness.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    requests: { type: 'string', default: '512' },
    clients: { type: 'string', default: '32' },
    tokens: { type: 'string', default: '32' },
    tasks: { type: 'string', default: '1,8,64' },
    adapters: { type: 'string', default: '1000' },
    shared: { type: 'string', default: process.env.SHARED_DIR ?? '../shared' },
    out: { type: 'string', default: 'bench/results/mixed-batching.json' },
  },
});
const REQUESTS = Number(args.requests);
const CLIENTS = Number(args.clients);
const TOKENS = Number(args.tokens);
const TASK_COUNTS = args.tasks!.split(',').map(Number);
const work = mkdtempSync(join(tmpdir(), 'bench-mixed-'));

// Prompts: the start of training-split verses and fortunes, 4 to 12 words.
const texts = ['kjv.jsonl', 'fortunes.jsonl'].flatMap((f) => readFileSync(join(args.shared!, 'data', f), 'utf8').split('\n').filter(Boolean).slice(2000, 2000 + REQUESTS));
const prompts = Array.from({ length: REQUESTS }, (_, i) => {
  const words = (JSON.parse(texts[i * 2 % texts.length]).text as string).split(/\s+/);
  return words.slice(0, 4 + (i % 9)).join(' ');
});

const POLICIES = [
  { name: '(a) one at a time', env: { MAX_BATCH_SIZE: '1' } },
  { name: '(b) same-task batching', env: { BATCH_POLICY: 'same-task' } },
  { name: '(c) mixed-task batching', env: { BATCH_POLICY: 'mixed' } },
];

interface Row { policy: string; tasks: number; reqPerS: number; tokPerS: number; p50: number; p99: number; ttftP50: number; ttftP99: number; healthP50: number; healthP99: number; healthMax: number }
const rows: Row[] = [];
for (const n of TASK_COUNTS) {
  const dir = join(work, `tasks-${n}`);
  const names = writeAdapters(dir, n);
  for (const policy of POLICIES) {
    const server = await startServerProcess({ ADAPTERS_DIR: dir, MAX_QUEUE: '4096', ...(policy.env as unknown as Record<string, string>) });
    const body = (i: number) => ({ prompt: prompts[i], raw: true, max_tokens: TOKENS, temperature: 0, ignore_eos: true });
    await Promise.all(names.slice(0, 8).map((t, i) => streamGenerate(server.url, t, body(i)))); // warm-up
    const probe = healthProbe(server.url);
    const results: { latency: number; ttft: number; tokens: number }[] = [];
    let next = 0;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: CLIENTS }, async () => {
      while (next < REQUESTS) {
        const i = next++;
        results.push(await streamGenerate(server.url, names[i % names.length], body(i)));
      }
    }));
    const seconds = (performance.now() - t0) / 1000;
    const health = probe.stop();
    await server.stop();
    const tokens = results.reduce((s, r) => s + r.tokens, 0);
    const row: Row = {
      policy: policy.name, tasks: n,
      reqPerS: REQUESTS / seconds, tokPerS: tokens / seconds,
      p50: percentile(results.map((r) => r.latency), 50), p99: percentile(results.map((r) => r.latency), 99),
      ttftP50: percentile(results.map((r) => r.ttft), 50), ttftP99: percentile(results.map((r) => r.ttft), 99),
      healthP50: percentile(health, 50), healthP99: percentile(health, 99), healthMax: Math.max(...health),
    };
    rows.push(row);
    console.error(`${policy.name}, ${n} tasks: ${row.tokPerS.toFixed(0)} tok/s`);
  }
}

const f = (x: number, d = 1) => x.toFixed(d);
console.log(`\nmixed-task batching: ${REQUESTS} requests × ${TOKENS} new tokens, ${CLIENTS} concurrent clients, streamed over HTTP; ${machineInfo().cpu}, ${machineInfo().cores} cores\n`);
printTable(
  ['policy', 'tasks', 'req/s', 'gen tok/s', 'p50 ms', 'p99 ms', 'TTFT p50 ms', 'TTFT p99 ms', 'healthz p50 ms', 'healthz p99 ms'],
  rows.map((r) => [r.policy, r.tasks, f(r.reqPerS, 2), f(r.tokPerS, 0), f(r.p50, 0), f(r.p99, 0), f(r.ttftP50, 0), f(r.ttftP99, 0), f(r.healthP50), f(r.healthP99)]),
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
