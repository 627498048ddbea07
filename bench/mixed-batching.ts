/**
 * Mixed-task batching against its alternatives, on one fixed workload: 512 generation requests,
 * 32 new tokens each, 32 concurrent clients, over real HTTP (streamed, for time to first token).
 *   (a) one request at a time   (b) batches of one task only   (c) mixed-task batching
 * each at 1, 8 and 64 distinct tasks. The machine is noisy, so the three policies alternate in rounds
 * (a b c a b c …, --rounds, at least 3 for figures worth quoting), each in a fresh server process; the
 * table gives each policy's median and the min–max of its rounds, and the ratios are of medians.
 * Then, with (c): 64 tasks of all six adapter kinds (prompt, P-tuning,
 * prefix, BitFit, LoRA, IA3) against 64 prompt-tuning tasks, interleaved in rounds (medians).
 * Also: resident bytes per adapter and RSS with 1,000 adapters. `--sampling greedy,top_p,logprobs`
 * (off by default) runs (c) at 1 task with each way of choosing tokens, interleaved in rounds
 * (`--sampling-rounds`): what sampling and log-probabilities cost against greedy through HTTP.
 *   npm run bench:mixed [-- --requests 512 --clients 32 --rounds 3 --kinds-rounds 3] (--tasks '' runs only the kinds workload)
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import { parseSafetensors } from '../src/model/safetensors.js';
import { benchPrompts, machineInfo, median, medianRow, POLICIES, rssBytes, runWorkload, spread, startServerProcess, SUPPORTED, writeAdapters, type WorkloadRow } from './harness.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    requests: { type: 'string', default: '512' },
    clients: { type: 'string', default: '32' },
    tokens: { type: 'string', default: '32' },
    tasks: { type: 'string', default: '1,8,64' },
    adapters: { type: 'string', default: '1000' },
    rounds: { type: 'string', default: '3' },
    'kinds-rounds': { type: 'string', default: '3' },
    sampling: { type: 'string', default: '' },
    'sampling-rounds': { type: 'string', default: '3' },
    fixtures: { type: 'string', default: 'test/fixtures' },
    out: { type: 'string', default: 'bench/results/mixed-batching.json' },
  },
});
const REQUESTS = Number(args.requests);
const CLIENTS = Number(args.clients);
const TOKENS = Number(args.tokens);
const TASK_COUNTS = args.tasks!.split(',').filter(Boolean).map(Number);
const work = mkdtempSync(join(tmpdir(), 'bench-mixed-'));

const prompts = benchPrompts(args.fixtures!, REQUESTS);
const ROUNDS = Number(args.rounds);
/** Every run of every (task count, policy), in the order they ran. */
const runs: WorkloadRow[] = [];
for (const n of TASK_COUNTS) {
  const dir = join(work, `tasks-${n}`);
  const tasks = writeAdapters(dir, n);
  for (let round = 0; round < ROUNDS; round++) {
    for (const policy of POLICIES) {
      const row = await runWorkload({ policy, adapterDir: dir, tasks, clients: CLIENTS, prompts, tokens: TOKENS });
      runs.push(row);
      console.error(`round ${round + 1}, ${policy.name}, ${n} tasks: ${row.tokPerS.toFixed(0)} tok/s`);
    }
  }
}
const runsOf = (policy: string, n: number) => runs.filter((r) => r.policy === policy && r.tasks === n);
/** One row per (task count, policy): medians of its rounds. */
const rows = TASK_COUNTS.flatMap((n) => POLICIES.map((p) => medianRow(runsOf(p.name, n))));

const f = (x: number, d = 1) => x.toFixed(d);
if (TASK_COUNTS.length > 0) {
  console.log('\nKV copied B/token: cache bytes the workers copied per generated token (a prompt written into a free slot, compactions); decode steps append in place and copy nothing else. A token\'s own keys and values take 8 KiB.');
  console.log('server / client cores: CPU time of the server process and of this load generator over the run, in cores (both share the machine).');
  console.log(`\nmixed-task batching: ${REQUESTS} requests × ${TOKENS} new tokens, ${CLIENTS} concurrent clients, streamed over HTTP; medians of ${ROUNDS} interleaved rounds (gen tok/s: min–max too); ${machineInfo().cpu}, ${machineInfo().cores} cores\n`);
  printTable(
    ['policy', 'tasks', 'req/s', 'gen tok/s', 'tok/s min–max', 'p50 ms', 'p99 ms', 'TTFT p50 ms', 'TTFT p99 ms', 'healthz p50 ms', 'healthz p99 ms', 'KV copied B/token', 'server cores', 'client cores'],
    rows.map((r) => [r.policy, r.tasks, f(r.reqPerS, 2), f(r.tokPerS, 0), spread(runsOf(r.policy, r.tasks).map((x) => x.tokPerS)), f(r.p50, 0), f(r.p99, 0), f(r.ttftP50, 0), f(r.ttftP99, 0), f(r.healthP50), f(r.healthP99), f(r.kvBytesPerToken, 0), f(r.serverCores, 2), f(r.clientCores, 2)]),
  );
  const tput = (p: string, n: number) => rows.find((r) => r.policy.startsWith(p) && r.tasks === n)?.tokPerS ?? NaN;
  console.log('\nratios of medians');
  printTable(
    ['tasks', '(c) / (a)', '(c) / (b)', '(c) at N tasks / (c) at 1 task'],
    TASK_COUNTS.map((n) => [n, f(tput('(c)', n) / tput('(a)', n), 2), f(tput('(c)', n) / tput('(b)', n), 2), f(tput('(c)', n) / tput('(c)', TASK_COUNTS[0]), 2)]),
  );
}

// Every adapter kind in one mixed batch, against prompt tuning alone: the variants alternate within
// each round, so both see the same machine load; medians over the rounds.
const KIND_TASKS = 64;
const kindSets = { 'all six kinds': [...SUPPORTED, 'pos-lora', 'pos-ia3'], 'prompt tuning only': ['pos-prompt'] };
const kindRuns: Record<string, WorkloadRow[]> = { 'all six kinds': [], 'prompt tuning only': [] };
const kindTasks = Object.fromEntries(Object.entries(kindSets).map(([name, kinds]) => [name, writeAdapters(join(work, name), KIND_TASKS, 'adapters', kinds)]));
const mixed = POLICIES.find((p) => p.name.startsWith('(c)'))!;
for (let round = 0; round < Number(args['kinds-rounds']); round++) {
  for (const name of Object.keys(kindSets)) {
    kindRuns[name].push(await runWorkload({ policy: mixed, adapterDir: join(work, name), tasks: kindTasks[name], clients: CLIENTS, prompts, tokens: TOKENS }));
    console.error(`kinds round ${round + 1}, ${name}: ${kindRuns[name].at(-1)!.tokPerS.toFixed(0)} tok/s`);
  }
}
const kindRows = Object.entries(kindRuns).map(([name, runs]) => ({ name, tokPerS: median(runs.map((r) => r.tokPerS)), p50: median(runs.map((r) => r.p50)), p99: median(runs.map((r) => r.p99)), each: runs.map((r) => Math.round(r.tokPerS)) }));
const kindRatio = kindRows[0].tokPerS / kindRows[1].tokPerS;
if (Number(args['kinds-rounds']) > 0) {
  console.log(`\nadapter kinds: ${KIND_TASKS} tasks with mixed-task batching, medians of ${args['kinds-rounds']} interleaved rounds`);
  printTable(['tasks', 'gen tok/s', 'p50 ms', 'p99 ms', 'each round tok/s'], kindRows.map((r) => [r.name, f(r.tokPerS, 0), f(r.p50, 0), f(r.p99, 0), r.each.join(' / ')]));
  console.log(`all six kinds / prompt tuning only: ${f(kindRatio, 2)}×`);
}

// Sampling through HTTP: each variant's fields on top of greedy; a seed per request, so requests differ.
const SAMPLINGS: Record<string, (i: number) => object> = {
  greedy: () => ({}),
  top_p: (i) => ({ temperature: 1, top_p: 0.9, seed: i }),
  temperature: (i) => ({ temperature: 1, seed: i }),
  top_k: (i) => ({ temperature: 1, top_k: 1000, seed: i }),
  logprobs: () => ({ logprobs: 5 }),
};
const samplingNames = args.sampling!.split(',').filter(Boolean);
const samplingRuns = new Map(samplingNames.map((name) => [name, [] as WorkloadRow[]]));
if (samplingNames.length > 0) {
  const dir = join(work, 'sampling');
  const tasks = writeAdapters(dir, 1);
  for (let round = 0; round < Number(args['sampling-rounds']); round++) {
    for (const name of samplingNames) {
      if (!SAMPLINGS[name]) throw new Error(`--sampling: one of ${Object.keys(SAMPLINGS).join(', ')}`);
      samplingRuns.get(name)!.push(await runWorkload({ policy: mixed, adapterDir: dir, tasks, clients: CLIENTS, prompts, tokens: TOKENS, sampling: SAMPLINGS[name] }));
      console.error(`sampling round ${round + 1}, ${name}: ${samplingRuns.get(name)!.at(-1)!.tokPerS.toFixed(0)} tok/s`);
    }
  }
  const greedy = median(samplingRuns.get('greedy')?.map((r) => r.tokPerS) ?? [NaN]);
  console.log(`\nsampling: (c) mixed-task batching, 1 task, ${CLIENTS} clients, ${REQUESTS} requests × ${TOKENS} tokens; medians of ${args['sampling-rounds']} interleaved rounds (top_p: temperature 1, top_p 0.9; top_k: temperature 1, top_k 1000; logprobs: greedy, logprobs 5)`);
  printTable(
    ['sampling', 'gen tok/s', 'tok/s min–max', 'of greedy', 'p50 ms', 'TTFT p50 ms'],
    samplingNames.map((name) => {
      const runs = samplingRuns.get(name)!;
      const tps = median(runs.map((r) => r.tokPerS));
      return [name, f(tps, 0), spread(runs.map((r) => r.tokPerS)), `${f((100 * tps) / greedy, 0)}%`, f(median(runs.map((r) => r.p50)), 0), f(median(runs.map((r) => r.ttftP50)), 0)];
    }),
  );
}
const tensorBytes = (name: string) => [...parseSafetensors(readFileSync(join('adapters', name, 'adapter_model.safetensors'))).tensors.values()].reduce((n, t) => n + t.data.byteLength, 0);

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
    ['LoRA (pos-lora: r 8 on c_attn, attn.c_proj, mlp.c_proj)', tensorBytes('pos-lora')],
    ['IA3 (pos-ia3: c_attn out, mlp.c_proj in)', tensorBytes('pos-ia3')],
  ]);
  console.log(`RSS with 7 adapters: ${(memory.rss7 / 2 ** 20).toFixed(1)} MiB; with ${args.adapters}: ${(memory.rssMany / 2 ** 20).toFixed(1)} MiB; ${(memory.perAdapter / 1024).toFixed(1)} KiB per added adapter`);
}
mkdirSync(join(args.out!, '..'), { recursive: true });
writeFileSync(args.out!, JSON.stringify({ machine: machineInfo(), requests: REQUESTS, clients: CLIENTS, tokens: TOKENS, rounds: ROUNDS, rows, runs, kinds: { rows: kindRows, ratio: kindRatio }, sampling: Object.fromEntries(samplingRuns), memory }, null, 2) + '\n');
rmSync(work, { recursive: true, force: true });
