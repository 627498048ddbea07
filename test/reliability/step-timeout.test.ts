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
