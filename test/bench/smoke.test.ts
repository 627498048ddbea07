/** The benchmark suite and the evaluation harness, on tiny workloads, so that they cannot rot. */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { ROOT } from '../helpers.js';

t.test('npm run bench -- --smoke completes and writes every result', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'sps-bench-'));
  const r = spawnSync(process.execPath, [join('dist', 'bench', 'run-all.js'), '--smoke', '--out', out], { cwd: ROOT, encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr.slice(-2000));
  const dir = join(out, 'smoke');
  for (const f of ['forward.json', 'mixed-batching.json', 'burst.json', 'sweeps.json', 'hot-swap.json', 'eval.json', 'summary.md', 'concurrency.svg', 'heterogeneity.svg']) {
    t.ok(existsSync(join(dir, f)), f);
  }
  const summary = readFileSync(join(dir, 'summary.md'), 'utf8');
  for (const section of ['Forward pass', 'Mixed-task batching', 'Burst of short mixed-task requests', 'Sweeps', 'Hot swap', 'Evaluation']) t.match(summary, `## ${section}`);
  t.notMatch(summary, /failed with exit code/);
  const evalJson = JSON.parse(readFileSync(join(dir, 'eval.json'), 'utf8'));
  for (const key of ['pos/frozen', 'pos/bitfit', 'pos/prefix', 'define/prefix', 'kjv/prompt', 'fortune/ptuning']) t.type(evalJson[key]?.score, 'number', key);
  t.match(readFileSync(join(dir, 'concurrency.svg'), 'utf8'), /^<svg/);
  // The burst benchmark checks its own answers: both variants give the same greedy tokens.
  const burst = JSON.parse(readFileSync(join(dir, 'burst.json'), 'utf8'));
  t.equal(burst.mismatches, 0, 'burst: all-at-once and one-by-one give the same tokens');
  t.ok(burst.speedup > 0, 'burst: a speed-up was measured');
});

t.test('bench/op-profile.ts: kernel time by op of decode steps, weights and attention MatMuls apart', async (t) => {
  const out = join(mkdtempSync(join(tmpdir(), 'sps-op-profile-')), 'op-profile.json');
  const r = spawnSync(process.execPath, [join('dist', 'bench', 'op-profile.js'), '--batches', '2', '--prompt', '8', '--steps', '4', '--reps', '3', '--out', out], { cwd: ROOT, encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr.slice(-2000));
  const [result] = JSON.parse(readFileSync(out, 'utf8')).results;
  t.equal(result.decodeRuns, 8, 'the decode runs of the two measured repetitions');
  const ops = new Map(result.ops.map((o: { op: string; nodesPerRun: number }) => [o.op, o.nodesPerRun]));
  t.equal(ops.get('MatMul (weights)'), 17, "the demo's 16 layer matrices and its LM head");
  t.equal(ops.get('MatMul (activations)'), 16, 'two over the cache and two over the new column, in each of 4 layers');
});

t.test('bench/upload-stall.ts: token gaps of streams while large adapters upload', async (t) => {
  const out = join(mkdtempSync(join(tmpdir(), 'sps-upload-stall-')), 'upload-stall.json');
  const r = spawnSync(process.execPath, [join('dist', 'bench', 'upload-stall.js'), '--rounds', '1', '--uploads', '2', '--rank', '64', '--clients', '2', '--out', out], { cwd: ROOT, encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr.slice(-2000));
  t.match(r.stdout, /\| this build +\|/);
  const [run] = JSON.parse(readFileSync(out, 'utf8')).runs['this build'];
  t.equal(run.uploadMs.length, 2, 'both uploads answered');
  t.ok(run.gapCount > 0, `token gaps were counted during the uploads (${run.gapCount})`);
  t.ok(run.gapMax >= run.gapP99, 'the largest gap is at least the p99');
});
