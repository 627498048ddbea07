import { Readable } from 'node:stream';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import t from 'tap';
import { untilAborted } from '../../src/http/until-aborted.js';

const stop = () => new Error('stopped');

t.test('yields every item, then ends, and leaves no listener behind', async (t) => {
  const controller = new AbortController();
  const seen: number[] = [];
  for await (const x of untilAborted(Readable.from([1, 2, 3]), controller.signal, stop)) seen.push(x);
  t.same(seen, [1, 2, 3]);
  controller.abort(); // nothing listens any more: no rejection goes unhandled
});

t.test('an abort while the next item is awaited ends the loop at once with the reason, and ends the source', async (t) => {
  const controller = new AbortController();
  const source = new Readable({ read() {} }); // sends one item, then stalls, as a slow client does
  source.push(Buffer.from('a'));
  const seen: string[] = [];
  const loop = (async () => {
    for await (const chunk of untilAborted<Buffer>(source, controller.signal, stop)) seen.push(chunk.toString());
  })();
  await new Promise((r) => setImmediate(r));
  controller.abort();
  await t.rejects(loop, { message: 'stopped' });
  t.same(seen, ['a']);
  source.push(null); // the stalled read settles: the iterator's return then destroys the stream
  await new Promise((r) => setImmediate(r));
  t.ok(source.destroyed, 'the source was ended');
  await t.rejects(async () => {
    for await (const _ of untilAborted(Readable.from([1]), controller.signal, stop)) t.fail('an aborted signal yields nothing');
  }, { message: 'stopped' });
});

t.test('the items already yielded are not kept alive until the loop ends', async (t) => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const MiB = 1 << 20;
  const chunks = (function* () {
    for (let i = 0; i < 256; i++) yield Buffer.alloc(MiB, i);
  })();
  let peak = 0;
  let i = 0;
  for await (const chunk of untilAborted(Readable.from(chunks, { objectMode: true }), new AbortController().signal, stop)) {
    void chunk;
    if (++i % 32 === 0) {
      gc();
      peak = Math.max(peak, process.memoryUsage().arrayBuffers);
    }
  }
  // 256 MiB went through: kept alive, they would all be there at the end.
  t.ok(peak < 64 * MiB, `array buffers at most ${(peak / MiB).toFixed(0)} MiB while 256 MiB went through`);
});
