import t from 'tap';
import { joinBytes } from '../src/adapters/join-bytes.js';
import { LoopTurns, SLICE_BYTES } from '../src/loop-turns.js';

t.test('the event loop gets a turn after every slice of bytes, not before', async (t) => {
  const turns = new LoopTurns();
  let ran = 0;
  const other = () => setImmediate(() => ran++); // another callback waiting for the loop
  other();
  await turns.handled(SLICE_BYTES - 1);
  t.equal(ran, 0, 'no turn short of a slice');
  await turns.handled(1);
  t.equal(ran, 1, 'a turn once a slice was handled');
  other();
  await turns.handled(SLICE_BYTES / 2);
  t.equal(ran, 1, 'the count starts again after a turn');
  await turns.handled(SLICE_BYTES);
  t.equal(ran, 2);
});

t.test('joinBytes joins in order, across slice boundaries, and lets the loop turn meanwhile', async (t) => {
  const parts = [SLICE_BYTES + 3, 5, 2 * SLICE_BYTES - 1].map((n, i) => Buffer.alloc(n, i + 1));
  let turns = 0;
  let done = false;
  const spin = () => !done && (turns++, setImmediate(spin)); // runs once per turn of the loop
  setImmediate(spin);
  const joined = await joinBytes(parts);
  done = true;
  t.ok(joined.equals(Buffer.concat(parts)), 'the same bytes as Buffer.concat');
  t.ok(turns >= 2, `the loop turned after each full slice of the 3 MiB copied (${turns} turns)`);
  const one = Buffer.from('x');
  t.equal(await joinBytes([one]), one, 'a single part is returned as is');
});
