import t from 'tap';
import { startServerProcess } from '../../src/tools/server-process.js';
import { ROOT } from '../helpers.js';

// A step past STEP_TIMEOUT_MS while onnxruntime-node runs natively: terminating the worker then
// aborted the whole process (SIGABRT: "terminate called after throwing an instance of
// 'Napi::Error'"). Now the step's rows get 503 and a fresh worker serves; the old one ends when
// its run returns. A separate process, since the abort is the failure.
t.test('a step past STEP_TIMEOUT_MS inside session.run: its requests get 503, the server lives and serves', async (t) => {
  const server = await startServerProcess({ STEP_TIMEOUT_MS: '100', ADAPTERS_DIR: `${ROOT}/adapters`, MODEL_DIR: `${ROOT}/models/demo-gpt2`, CACHE_DIR: `${ROOT}/.cache` }, { cwd: ROOT });
  let exited: number | null = null;
  server.child.once('exit', (code, signal) => (exited = code ?? (signal ? 128 : -1)));
  t.teardown(() => server.stop());
  const post = (task: string, body: object) => fetch(`${server.url}/v1/tasks/${task}/${'input' in body ? 'classify' : 'generate'}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  // Two classify requests of 64 inputs of about 420 tokens: prefill steps of thousands of positions, each well over 100 ms.
  const long = 'the quick brown fox jumps over the lazy dog '.repeat(30);
  const statuses = await Promise.all(['pos-prompt', 'pos-bitfit'].map(async (task) => (await post(task, { input: Array(64).fill(long) })).status));
  t.ok(statuses.includes(503), `statuses ${statuses}: a step timed out`);
  await new Promise((r) => setTimeout(r, 300));
  t.equal(exited, null, 'the server process is alive');
  const after = await post('base', { prompt: 'ocean', max_tokens: 3, temperature: 0, ignore_eos: true });
  t.equal(after.status, 200, 'and serves');
  t.equal((await after.json()).token_ids.length, 3);
});

t.test('a session.run that outlasts STEP_TIMEOUT_MS by seconds: the worker is terminated only when it returns, and the process neither aborts nor stops serving', async (t) => {
  // session.run is synchronous native work on the worker's thread: terminating the worker inside one
  // aborted the process (SIGABRT, Napi::Error) when the run returned, here and at shutdown.
  const server = await startServerProcess({ STEP_TIMEOUT_MS: '100', MAX_BATCH_TOKENS: '65536', ADAPTERS_DIR: `${ROOT}/adapters`, MODEL_DIR: `${ROOT}/models/demo-gpt2`, CACHE_DIR: `${ROOT}/.cache` }, { cwd: ROOT });
  let exited: string | null = null;
  const exit = new Promise<void>((resolve) => server.child.once('exit', (code, signal) => ((exited = `${code} ${signal}`), resolve())));
  t.teardown(() => (exited === null ? server.stop() : undefined));
  const post = (task: string, body: object) => fetch(`${server.url}/v1/tasks/${task}/${'input' in body ? 'classify' : 'generate'}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  // One prefill step of 64 rows of about 300 tokens each per task, seconds long on 2 cores.
  const long = 'the quick brown fox jumps over the lazy dog '.repeat(33);
  const statuses = await Promise.all(['pos-prompt', 'pos-bitfit'].map(async (task) => (await post(task, { input: Array(64).fill(long) })).status));
  t.same(statuses, [503, 503], 'both steps timed out');
  const after = await post('base', { prompt: 'ocean', max_tokens: 3, temperature: 0, ignore_eos: true });
  t.equal(after.status, 200, 'a fresh worker serves meanwhile');
  await new Promise((r) => setTimeout(r, 2500));
  t.equal(exited, null, 'alive past the old 1 s ping');
  server.child.kill('SIGTERM');
  await exit;
  t.equal(exited, '0 null', 'and it shuts down cleanly');
});
