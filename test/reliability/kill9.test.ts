import t from 'tap';
import { killLoop } from '../../bench/reliability/kill9.js';
import { ROOT } from '../helpers.js';

// The CI size of bench/reliability/kill9.ts (50 kills there).
t.test('kill -9 during uploads, 3 times: every task absent or complete, the server restarts and accepts uploads', async (t) => {
  const report = await killLoop(ROOT, 3);
  t.equal(report.kills, 3);
  t.equal(report.restarts, 3);
  t.ok(report.uploadsAnswered > 0, `uploads were in progress (${report.uploadsAnswered} answered before the kills)`);
  t.equal(report.tasksChecked, 18);
  t.same(report.problems, []);
});
