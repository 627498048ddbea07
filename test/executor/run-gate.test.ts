import t from 'tap';
import { RunGate } from '../../src/executor/run-gate.js';

t.test('the main thread closes the gate only between runs, and no run starts once it asked', async (t) => {
  const worker = new RunGate();
  const main = new RunGate(worker.buffer); // the same memory, as a worker and the main thread share it
  worker.enter();
  t.notOk(main.close(), 'a run is in progress: not safe to terminate');
  t.throws(() => new RunGate(worker.buffer).enter(), /abandoned/, 'no other run starts once closing was asked');
  worker.leave();
  t.ok(main.close(), 'the run returned: closed');
  t.throws(() => worker.enter(), /abandoned/);
  t.ok(main.close(), 'closing again is still true');
});

t.test('a worker between runs (or stuck in JavaScript) is closed at once', async (t) => {
  const gate = new RunGate();
  gate.enter();
  gate.leave();
  t.ok(gate.close());
});
