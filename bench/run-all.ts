/**
 * npm run bench: every benchmark in one run, on this machine. Each writes bench/results/*.json;
 * this collects their tables into bench/results/summary.md, with the machine and the date.
 *   npm run bench [-- --smoke]   (--smoke: tiny workloads, for CI)
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { machineInfo } from './harness.js';

const { values: args } = parseArgs({ options: { smoke: { type: 'boolean', default: false }, out: { type: 'string', default: 'bench/results' } } });
const out = args.smoke ? join(args.out!, 'smoke') : args.out!;
mkdirSync(out, { recursive: true });
const smoke = (full: string[], small: string[]) => (args.smoke ? small : full);
const steps: { name: string; script: string; args: string[] }[] = [
  { name: 'Forward pass', script: 'forward.js', args: smoke([], ['--batches', '1,8', '--rounds', '1', '--min-ms', '0', '--sampling', 'greedy,logprobs,top_p']) },
  { name: 'Prefill: one padded run against runs of similar length', script: 'prefill-runs.js', args: smoke([], ['--batches', '8', '--rounds', '1', '--min-ms', '0']) },
  { name: 'Graph ops before and after ONNX Runtime optimisation', script: 'graph-ops.js', args: [] },
  { name: 'Mixed-task batching', script: 'mixed-batching.js', args: [...smoke(['--sampling', 'greedy,top_p,logprobs'], ['--requests', '16', '--tasks', '1,8', '--adapters', '20', '--rounds', '1', '--kinds-rounds', '1', '--sampling', 'greedy,top_p', '--sampling-rounds', '1']), '--out', join(out, 'mixed-batching.json')] },
  { name: 'Burst of short mixed-task requests', script: 'burst.js', args: [...smoke([], ['--requests', '10', '--tokens', '4', '--rounds', '1']), '--out', join(out, 'burst.json')] },
  { name: 'Sweeps (charts)', script: 'sweeps.js', args: [...smoke([], ['--requests', '16', '--clients', '1,8', '--tasks', '1,8']), '--out', out] },
  { name: 'Hot swap', script: 'hot-swap.js', args: [...smoke([], ['--swaps', '4', '--seconds', '1', '--adapters', '50']), '--out', join(out, 'hot-swap.json')] },
  { name: 'Evaluation', script: 'eval.js', args: [...smoke([], ['--smoke']), '--out', join(out, 'eval.json')] },
];
const m = machineInfo();
const sections: string[] = [`# Benchmark results\n\n${m.date} on ${m.cpu} (${m.cores} cores), Node ${m.node}, onnxruntime-node ${m.onnxruntime}${args.smoke ? ' — smoke run, tiny workloads' : ''}.\n`];
let failed = false;
for (const step of steps) {
  const t0 = performance.now();
  console.error(`== ${step.name}`);
  const r = spawnSync(process.execPath, [join('dist', 'bench', step.script), ...step.args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, BENCH_OUT: out } });
  process.stdout.write(r.stdout);
  const seconds = ((performance.now() - t0) / 1000).toFixed(0);
  if (r.status !== 0) failed = true;
  sections.push(`## ${step.name}\n\n${r.status === 0 ? '' : `**failed with exit code ${r.status}**\n\n`}${r.stdout.trim()}\n\n(${seconds} s)\n`);
}
if (!args.smoke) sections.push('## Charts\n\n![Throughput against concurrency](concurrency.svg)\n\n![Throughput against distinct tasks](heterogeneity.svg)\n');
writeFileSync(join(out, 'summary.md'), sections.join('\n'));
console.error(`wrote ${join(out, 'summary.md')}`);
process.exit(failed ? 1 : 0);
