import { spawnSync } from 'node:child_process';
import { cpus } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { ConfigError, loadConfig } from '../src/config.js';
import { ROOT } from './helpers.js';

const refused = (env: Record<string, string>) => {
  try {
    loadConfig(env);
  } catch (e) {
    return e instanceof ConfigError ? e.message : `not a ConfigError: ${(e as Error).message}`;
  }
  return null;
};

t.test('defaults', async (t) => {
  const c = loadConfig({});
  t.equal(c.batchPolicy, 'mixed');
  t.equal(c.trustProxy, false);
  t.equal(c.reconcileIntervalMs, 30_000);
  t.equal(c.port, 8080);
  t.equal(c.workers, Math.min(2, cpus().length));
  t.equal(c.intraOpThreads, Math.max(1, Math.floor(cpus().length / c.workers)), 'the cores shared out between the workers');
  t.equal(c.spinThreads, false);
  t.equal(c.promptKvCache, true);
  t.equal(loadConfig({ PROMPT_KV_CACHE: 'off' }).promptKvCache, false);
  t.equal(c.batchWaitMs, 2);
  t.equal(loadConfig({ INTRA_OP_THREADS: '1' }).intraOpThreads, 1);
});

t.test('every invalid variable is a ConfigError that names it', async (t) => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ BATCH_POLICY: 'same_task' }, /BATCH_POLICY must be one of mixed, same-task, got 'same_task'/],
    [{ BATCH_POLICY: 'mixd' }, /BATCH_POLICY/],
    [{ PORT: 'eighty' }, /PORT/],
    [{ PORT: '70000' }, /PORT/],
    [{ MAX_BATCH_SIZE: '0' }, /MAX_BATCH_SIZE/],
    [{ MAX_QUEUE: '1.5' }, /MAX_QUEUE/],
    [{ WORKERS: ' ' }, /WORKERS/],
    [{ EXECUTION_PROVIDER: 'cuda' }, /EXECUTION_PROVIDER/],
    [{ LOG_LEVEL: 'verbose' }, /LOG_LEVEL/],
    [{ PROMPT_KV_CACHE: 'no' }, /PROMPT_KV_CACHE must be one of on, off, got 'no'/],
    [{ TRUST_PROXY: 'yes please' }, /TRUST_PROXY/],
    [{ RECONCILE_INTERVAL_MS: '-1' }, /RECONCILE_INTERVAL_MS/],
    // Found by an adversarial round: accepted values that broke the server later.
    [{ PORT: '0x1F' }, /PORT/],
    [{ MAX_QUEUE: '1e3' }, /MAX_QUEUE/],
    [{ REQUEST_TIMEOUT_MS: '2147483648' }, /REQUEST_TIMEOUT_MS must be an integer from 1 to 2147483647/],
    [{ STEP_TIMEOUT_MS: '9999999999' }, /STEP_TIMEOUT_MS/],
    [{ RECONCILE_INTERVAL_MS: '2147483648' }, /RECONCILE_INTERVAL_MS/],
    [{ BATCH_WAIT_MS: '20000' }, /BATCH_WAIT_MS must be an integer from 0 to 1000/],
    [{ ADMIN_TOKEN: '  ' }, /ADMIN_TOKEN is set but blank/],
    [{ ADMIN_TOKEN: '' }, /ADMIN_TOKEN is set but blank/],
    [{ API_TOKENS: ' , ' }, /API_TOKENS names no token/],
  ];
  for (const [env, message] of cases) t.match(refused(env), message, JSON.stringify(env));
});

t.test('accepted spellings', async (t) => {
  t.equal(loadConfig({ BATCH_POLICY: 'Same-Task' }).batchPolicy, 'same-task');
  t.equal(loadConfig({ TRUST_PROXY: 'true' }).trustProxy, true);
  t.same(loadConfig({ TRUST_PROXY: 'loopback, 10.0.0.0/8' }).trustProxy, ['loopback', '10.0.0.0/8']);
  t.equal(loadConfig({ TRUST_PROXY: 'false' }).trustProxy, false);
  t.same(loadConfig({ API_TOKENS: ' a , b\u00a0,,' }).apiTokens, ['a', 'b']);
  t.same(loadConfig({ API_TOKENS: '' }).apiTokens, [], 'empty: inference open, as unset');
  t.equal(loadConfig({ HOST: '' }).host, '127.0.0.1', 'an empty HOST is the default, not every interface');
  t.equal(loadConfig({ ADMIN_TOKEN: ' secret ' }).adminToken, 'secret');
  t.equal(loadConfig({}).adminToken, undefined);
  t.equal(loadConfig({ REQUEST_TIMEOUT_MS: '2147483647' }).requestTimeoutMs, 2147483647);
});

t.test('the server binary prints one line and exits 1 on an invalid variable', async (t) => {
  const main = join(ROOT, 'dist', 'src', 'main.js');
  for (const env of [{ BATCH_POLICY: 'mixd' }]) {
    const r = spawnSync(process.execPath, [main], { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 20_000 });
    t.equal(r.status, 1, JSON.stringify(env));
    const lines = r.stderr.trim().split('\n');
    t.equal(lines.length, 1, `one line: ${r.stderr}`);
    t.match(lines[0], /^softprompt-server: invalid configuration: /);
    t.notMatch(r.stderr, /\bat .*\.js:\d+/, 'no stack trace');
    t.equal(r.stdout, '');
  }
});
