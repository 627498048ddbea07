import t from 'tap';
import { adaptersScratch, fuzzUploads } from '../../bench/reliability/uploads.js';
import { ROOT } from '../helpers.js';
import { startServerProcess } from '../redis-process.js';

// The CI size of bench/reliability/uploads.ts (1,000 there).
const server = await startServerProcess({ ADMIN_TOKEN: 'upload-admin', ADAPTERS_DIR: adaptersScratch(ROOT), MAX_ADAPTER_BYTES: String(4 * 2 ** 20) });
t.teardown(() => server.stop());

t.test('200 mutated uploads: refusals are 4xx in shape and change nothing, acceptances serve', async (t) => {
  const seed = Number(process.env.UPLOAD_SEED ?? 20261128);
  const report = await fuzzUploads(server.url, ROOT, 'upload-admin', 200, seed);
  t.equal(report.sent, 200);
  t.same(report.problems.slice(0, 10), [], `seed ${seed}: ${report.problems.length} problems`);
  t.ok(report.accepted > 0 && report.accepted < 200, `some mutations are harmless and accepted (${report.accepted}), most are refused`);
  t.equal(server.child.exitCode, null, 'the process is alive');
});
