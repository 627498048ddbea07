import t from 'tap';
import { LatestPerTask } from '../../src/adapters/latest-per-task.js';

const later = () => {
  let settle!: (v: string) => void;
  const p = new Promise<string>((r) => (settle = r));
  return { p, settle };
};
const turn = () => new Promise((r) => setImmediate(r));

t.test("a task's entry is its latest operation, and leaves once that one settles", async (t) => {
  const latest = new LatestPerTask<string>();
  const first = later();
  const second = later();
  latest.set('a', first.p);
  latest.set('a', second.p);
  t.equal(latest.get('a'), second.p, 'the later one took its place');
  first.settle('one');
  await turn();
  t.equal(latest.get('a'), second.p, "the earlier one's settling does not remove the later");
  second.settle('two');
  await turn();
  t.equal(latest.get('a'), undefined, 'nothing in flight: no entry');
  t.equal(latest.get('b'), undefined);
});
