import { connect, type Socket } from 'node:net';
import t from 'tap';
import { startServerProcess } from '../../src/tools/server-process.js';
import { ROOT, startServer } from '../helpers.js';

// Fastify's close waits for connections in the middle of a request, and by default a request that
// stops arriving never times out: one client that left a body or its headers half-sent kept a
// SIGTERM'd server from ever exiting (Kubernetes then SIGKILLs it). A separate process: the exit is the check.
t.test('SIGTERM exits 0 within SHUTDOWN_DEADLINE_MS although clients left requests half-sent', async (t) => {
  const server = await startServerProcess({ SHUTDOWN_DEADLINE_MS: '1000', ADMIN_TOKEN: 'admin', ADAPTERS_DIR: `${ROOT}/adapters`, MODEL_DIR: `${ROOT}/models/demo-gpt2`, CACHE_DIR: `${ROOT}/.cache` }, { cwd: ROOT });
  t.teardown(() => server.child.kill('SIGKILL'));
  const { hostname, port } = new URL(server.url);
  const open = (text: string) =>
    new Promise<Socket>((resolve) => {
      const s = connect(Number(port), hostname, () => s.write(text, () => resolve(s)));
      s.on('error', () => {});
    });
  const sockets = [
    await open('GET /healthz HTTP/1.1\r\nHo'), // headers stop mid-way
    await open('POST /v1/tasks/base/generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"prompt":'), // a body stops mid-way
    // An upload whose file stops mid-way: answered 503 at SIGTERM rather than dropped at the deadline.
    await open(
      'PUT /v1/adapters/slow HTTP/1.1\r\nhost: x\r\nauthorization: Bearer admin\r\ncontent-type: multipart/form-data; boundary=b\r\ncontent-length: 100000\r\n\r\n' +
        '--b\r\ncontent-disposition: form-data; name="adapter_model.safetensors"; filename="w"\r\ncontent-type: application/octet-stream\r\n\r\n' +
        'x'.repeat(5000),
    ),
  ];
  let uploadAnswer = '';
  sockets[2].on('data', (d: Buffer) => (uploadAnswer += d.toString()));
  const closed = sockets.map((s) => new Promise<void>((r) => s.once('close', () => r())));
  await new Promise((r) => setTimeout(r, 200)); // the server has read what was sent
  let socketsOpenAtExit = -1;
  const exit = new Promise<number | null>((r) =>
    server.child.once('exit', (code) => {
      socketsOpenAtExit = sockets.filter((s) => !s.destroyed).length;
      r(code);
    }),
  );
  const t0 = performance.now();
  server.child.kill('SIGTERM');
  // The safety net only: a hang fails here instead of holding the suite.
  const code = await Promise.race([exit, new Promise<string>((r) => setTimeout(() => r('still running 20 s after SIGTERM'), 20_000))]);
  const seconds = (performance.now() - t0) / 1000;
  t.equal(code, 0, 'exit code');
  // The deadline (1 s) plus the closing of workers and sessions; a hang would be the 20 s above.
  t.ok(seconds < 8, `exited ${seconds.toFixed(1)} s after SIGTERM`);
  await Promise.all(closed);
  t.ok(socketsOpenAtExit >= 0, 'the half-sent requests were closed by the server (their sockets end with it)');
  t.match(uploadAnswer, /^HTTP\/1\.1 503 [^]*"code":"shutting_down"/, 'the upload in progress was answered 503 shutting_down');
});

t.test('an upload answered 503 at SIGTERM does not hold the process: its connection ends when the client stops sending', async (t) => {
  // A deadline far longer than the exit takes: a connection left open would hold the process to it.
  const server = await startServerProcess({ SHUTDOWN_DEADLINE_MS: '60000', ADMIN_TOKEN: 'admin', ADAPTERS_DIR: `${ROOT}/adapters`, MODEL_DIR: `${ROOT}/models/demo-gpt2`, CACHE_DIR: `${ROOT}/.cache` }, { cwd: ROOT });
  t.teardown(() => server.child.kill('SIGKILL'));
  const { hostname, port } = new URL(server.url);
  const socket = await new Promise<Socket>((resolve) => {
    const s = connect(Number(port), hostname, () =>
      s.write(
        'PUT /v1/adapters/fast HTTP/1.1\r\nhost: x\r\nauthorization: Bearer admin\r\ncontent-type: multipart/form-data; boundary=b\r\ncontent-length: 50000000\r\n\r\n' +
          '--b\r\ncontent-disposition: form-data; name="adapter_model.safetensors"; filename="w"\r\ncontent-type: application/octet-stream\r\n\r\n' +
          'x'.repeat(200_000),
        () => resolve(s),
      ),
    );
    s.on('error', () => {});
  });
  let answer = '';
  socket.on('data', (d: Buffer) => (answer += d.toString()));
  const answered = new Promise<void>((r) => socket.on('data', () => answer.includes('shutting_down') && r()));
  const closedByServer = new Promise<void>((r) => socket.once('end', () => r()));
  const exit = new Promise<number | null>((r) => server.child.once('exit', (code) => r(code)));
  await new Promise((r) => setTimeout(r, 200));
  server.child.kill('SIGTERM');
  await answered;
  t.match(answer, /^HTTP\/1\.1 503 [^]*connection: close/i, '503, and the connection will close');
  socket.write('x'.repeat(100_000)); // the client still sends a little, then stops: as curl does on a 503
  socket.end();
  const outcome = await Promise.race([Promise.all([closedByServer, exit]).then(([, code]) => code), new Promise<string>((r) => setTimeout(() => r('still running 20 s after SIGTERM'), 20_000))]);
  t.equal(outcome, 0, 'the server ended the connection and exited with 0, long before the 60 s deadline');
});

t.test('requests must arrive within 5 minutes, and a connection silent past REQUEST_TIMEOUT_MS + 30 s is closed (Fastify sets neither)', async (t) => {
  const server = await startServer({ REQUEST_TIMEOUT_MS: '45000' });
  t.teardown(() => server.close());
  t.equal(server.app.server.requestTimeout, 300_000);
  t.equal(server.app.server.timeout, 75_000);
});
