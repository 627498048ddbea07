import { cpSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { fuzz } from '../../bench/reliability/requests.js';
import { ROOT } from '../helpers.js';
import { startServerProcess } from '../redis-process.js';

// The CI size of bench/reliability/fuzz.ts: 1,000 generated requests over every route, real HTTP.
const adapters = mkdtempSync(join(tmpdir(), 'sps-fuzz-'));
cpSync(join(ROOT, 'adapters'), adapters, { recursive: true });
const server = await startServerProcess({ ADMIN_TOKEN: 'fuzz-admin', ADAPTERS_DIR: adapters, MAX_ADAPTER_BYTES: String(4 * 2 ** 20) });
t.teardown(() => server.stop());

t.test('1,000 generated requests: no 5xx, every error in the documented shape, the process survives', async (t) => {
  const seed = Number(process.env.FUZZ_SEED ?? 20261128);
  const report = await fuzz(server.url, { adminToken: 'fuzz-admin', maxText: 2000, maxTokens: 16, count: 1000, seed, concurrency: 8, routerEdgeCases: true });
  t.equal(report.sent, 1000);
  t.same(report.problems.slice(0, 10), [], `seed ${seed}: ${report.problems.length} contract breaks`);
  t.ok((report.statuses[200] ?? 0) >= 100, `enough requests were valid to reach the model (${report.statuses[200]} × 200)`);
  t.equal(server.child.exitCode, null, 'the process is alive');
  t.equal((await fetch(`${server.url}/healthz`)).status, 200);
  const res = await fetch(`${server.url}/v1/tasks/pos-prefix/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'happily ->', max_tokens: 4, temperature: 0 }) });
  t.equal(res.status, 200, 'and still serves');
});
