/**
 * A burst of short mixed-task requests: the reference texts (every adapter and the base model, in
 * turn), `max_tokens` 20, `logprobs` 5, greedy — all sent at once against the same requests one after
 * another, through real HTTP against one real server process. The two variants alternate in rounds
 * (at once, one by one, at once, …) so both see the same machine load; the table gives the median and
 * the min–max of each, and the speed-up from the medians (issue 13's target: ≥ 3×).
 * Greedy and batch-invariant, so both variants must produce the same tokens: mismatches are counted.
 *   npm run build && node dist/bench/burst.js [--requests 128 --rounds 3 --tokens 20 --logprobs 5]
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { machineInfo, median, startServerProcess } from './harness.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    requests: { type: 'string', default: '128' },
    rounds: { type: 'string', default: '3' },
    tokens: { type: 'string', default: '20' },
    logprobs: { type: 'string', default: '5' },
    fixtures: { type: 'string', default: 'test/fixtures' },
    out: { type: 'string', default: 'bench/results/burst.json' },
  },
});
const REQUESTS = Number(args.requests);
const ROUNDS = Number(args.rounds);

const cases: { adapter: string | null; text: string }[] = JSON.parse(readFileSync(join(args.fixtures!, 'reference', 'reference.json'), 'utf8')).cases;
// The fixture lists its cases adapter by adapter: deal them out in turn, so any prefix mixes every task.
const groups = [...new Set(cases.map((c) => c.adapter))].map((a) => cases.filter((c) => c.adapter === a));
const dealt = Array.from({ length: cases.length }, (_, i) => {
  const group = groups[i % groups.length];
  return group[Math.floor(i / groups.length) % group.length];
});
const requests = Array.from({ length: REQUESTS }, (_, i) => {
  const c = dealt[i % dealt.length];
  // ignore_eos: every request generates exactly `tokens` tokens, so both variants do the same work.
  return { task: c.adapter ?? 'base', body: JSON.stringify({ prompt: c.text, raw: true, max_tokens: Number(args.tokens), logprobs: Number(args.logprobs), temperature: 0, ignore_eos: true }) };
});

// Queue bound above the burst, so that no request is refused (a 429 would make the burst look faster).
const server = await startServerProcess({ MAX_QUEUE: String(Math.max(1024, 2 * REQUESTS)) }); // info level: the harness finds the port in its 'listening' line

interface Result {
  tokens: number[];
}
async function send(i: number): Promise<Result> {
  const r = requests[i];
  const res = await fetch(`${server.url}/v1/tasks/${r.task}/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: r.body });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`request ${i} (${r.task}): ${res.status} ${text.slice(0, 300)}`);
  const json = JSON.parse(text) as { token_ids: number[]; logprobs?: unknown[] };
  if ((json.logprobs?.length ?? 0) !== json.token_ids.length) throw new Error(`request ${i}: ${json.logprobs?.length} logprobs for ${json.token_ids.length} tokens`);
  return { tokens: json.token_ids };
}

const VARIANTS = {
  'all at once': async () => Promise.all(requests.map((_, i) => send(i))),
  'one after another': async () => {
    const out: Result[] = [];
    for (let i = 0; i < requests.length; i++) out.push(await send(i));
    return out;
  },
} satisfies Record<string, () => Promise<Result[]>>;
type Variant = keyof typeof VARIANTS;

try {
  await Promise.all([...new Set(requests.map((r) => r.task))].map((task) => send(requests.findIndex((r) => r.task === task)))); // warm-up: every task once
  const seconds: Record<Variant, number[]> = { 'all at once': [], 'one after another': [] };
  let reference: Result[] | undefined;
  let mismatches = 0;
  let tokens = 0;
  for (let round = 0; round < ROUNDS; round++) {
    for (const name of Object.keys(VARIANTS) as Variant[]) {
      const t0 = performance.now();
      const results = await VARIANTS[name]();
      seconds[name].push((performance.now() - t0) / 1000);
      tokens = results.reduce((n, r) => n + r.tokens.length, 0);
      reference ??= results;
      mismatches += results.filter((r, i) => r.tokens.join() !== reference![i].tokens.join()).length;
      console.error(`round ${round + 1}, ${name}: ${seconds[name].at(-1)!.toFixed(2)} s`);
    }
  }
  const rows = (Object.keys(seconds) as Variant[]).map((name) => ({ name, median: median(seconds[name]), min: Math.min(...seconds[name]), max: Math.max(...seconds[name]), each: seconds[name] }));
  const m = machineInfo();
  console.log(`\nburst: ${REQUESTS} generate requests over ${new Set(requests.map((r) => r.task)).size} tasks (the reference texts), max_tokens ${args.tokens}, logprobs ${args.logprobs}, greedy; ${ROUNDS} interleaved rounds; ${m.cpu}, ${m.cores} cores\n`);
  printTable(
    ['variant', 'median s', 'min–max s', 'req/s (median)', 'gen tok/s (median)'],
    rows.map((r) => [r.name, r.median.toFixed(2), `${r.min.toFixed(2)}–${r.max.toFixed(2)}`, (REQUESTS / r.median).toFixed(1), (tokens / r.median).toFixed(0)]),
  );
  const speedup = rows[1].median / rows[0].median;
  console.log(`\nall at once is ${speedup.toFixed(2)}× faster than one after another (medians; target ≥ 3×); ${mismatches} of ${REQUESTS * ROUNDS * 2} responses differed from the first round's tokens`);
  mkdirSync(dirname(args.out!), { recursive: true });
  writeFileSync(args.out!, JSON.stringify({ machine: m, requests: REQUESTS, rounds: ROUNDS, tokens: Number(args.tokens), logprobs: Number(args.logprobs), rows, speedup, mismatches }, null, 2) + '\n');
} finally {
  await server.stop();
}
