import { Writable } from 'node:stream';
import t from 'tap';
import type { FastifyReply } from 'fastify';
import { openEventStream, STREAM_BUFFER_BYTES } from '../../src/http/sse.js';

/** A reply whose socket takes writes at the pace of a client that reads (`reading`) or never reads. */
function fakeReply(reading: boolean) {
  const raw = new Writable({
    write(_chunk, _enc, done) {
      if (reading) done(); // a client that never reads never acknowledges: writes pile up in the buffer
    },
  }) as Writable & { writeHead: () => void; headersSent: boolean };
  raw.writeHead = () => {
    raw.headersSent = true;
  };
  raw.headersSent = false;
  const warnings: unknown[] = [];
  const reply = { sent: false, raw, hijack() {}, request: { id: 'r1' }, log: { warn: (o: unknown) => warnings.push(o) } };
  return { reply: reply as unknown as FastifyReply, raw, warnings };
}

const event = { text: 'x'.repeat(1000) };
const eventBytes = Buffer.byteLength(`data: ${JSON.stringify(event)}\n\n`);

t.test('a stream whose client stops reading is closed once it buffers more than STREAM_BUFFER_BYTES', async (t) => {
  const { reply, raw, warnings } = fakeReply(false);
  const stream = openEventStream(reply);
  let sent = 0;
  while (!raw.destroyed && sent < 3 * STREAM_BUFFER_BYTES) {
    stream.send(event);
    sent += eventBytes;
  }
  t.ok(raw.destroyed, 'the connection was closed');
  t.ok(sent > STREAM_BUFFER_BYTES && sent <= STREAM_BUFFER_BYTES + eventBytes, `closed right past the bound (${sent} bytes sent)`);
  t.equal(warnings.length, 1, 'logged once');
  stream.send(event); // later events of the cancelled generation go nowhere
  stream.done();
  t.equal(warnings.length, 1);
});

t.test('a client that reads is never cut off, however much it receives', async (t) => {
  const { reply, raw } = fakeReply(true);
  const stream = openEventStream(reply);
  for (let sent = 0; sent < 2 * STREAM_BUFFER_BYTES; sent += eventBytes) stream.send(event);
  stream.done();
  t.notOk(raw.destroyed);
  t.ok(raw.writableEnded);
});
