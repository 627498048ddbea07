/**
 * No Docker engine runs here, so this performs docker/Dockerfile's steps outside Docker: each
 * stage is a fresh folder standing for /app, COPY lines copy from a clean copy of the repository
 * (or from the build stage), `RUN npm ...` lines run there, and the runtime stage is started with
 * the Dockerfile's ENV and CMD until /readyz answers. HOST is kept on the loopback for the test.
 */
import { execSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { startServerProcess } from '../../src/tools/server-process.js';
import { ROOT } from '../helpers.js';

const dockerfile = readFileSync(join(ROOT, 'docker', 'Dockerfile'), 'utf8').replace(/\\\n\s*/g, ' ');
const work = mkdtempSync(join(tmpdir(), 'sps-docker-'));
const context = join(work, 'context');
// The build context: the files git tracks, as a fresh clone has them (.dockerignore excludes the rest).
mkdirSync(context);
for (const f of execSync('git ls-files', { cwd: ROOT, encoding: 'utf8' }).split('\n').filter(Boolean)) {
  if (!existsSync(join(ROOT, f))) continue;
  mkdirSync(join(context, f, '..'), { recursive: true });
  cpSync(join(ROOT, f), join(context, f));
}

const stages = new Map<string, string>();
let stage = '';
let env: Record<string, string> = {};
let cmd: string[] = [];
for (const line of dockerfile.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'))) {
  const [op, ...rest] = line.split(/\s+/);
  const args = rest.join(' ');
  if (op === 'FROM') {
    const name = /AS\s+(\S+)/i.exec(args)?.[1] ?? `stage${stages.size}`;
    stage = join(work, name);
    mkdirSync(stage);
    stages.set(name, stage);
    env = {};
  } else if (op === 'COPY') {
    const from = /--from=(\S+)/.exec(args)?.[1];
    const parts = args.replace(/--from=\S+\s*/, '').split(/\s+/);
    const dest = parts.pop()!;
    for (const src of parts) {
      const source = from ? join(stages.get(from)!, src.replace(/^\/app\/?/, '')) : join(context, src);
      const target = dest.endsWith('/') ? join(stage, dest, src.split('/').pop()!) : join(stage, dest);
      cpSync(source, target, { recursive: true });
    }
  } else if (op === 'RUN' && args.startsWith('npm ')) {
    t.comment(`${stage.split('/').pop()}: ${args}`);
    execSync(args, { cwd: stage, stdio: 'ignore', env: { ...process.env, ...env } });
  } else if (op === 'ENV') {
    for (const m of args.matchAll(/(\w+)=(\S+)/g)) env[m[1]] = m[2];
  } else if (op === 'CMD') {
    cmd = JSON.parse(args);
  }
}

t.test('the runtime stage starts from the Dockerfile CMD and answers /readyz', async (t) => {
  t.ok(existsSync(join(stage, 'dist', 'src', 'main.js')), 'the build stage produced dist/src');
  t.notOk(existsSync(join(stage, 'node_modules', 'typescript')), 'production dependencies only');
  t.equal(cmd[0], 'node');
  const server = await startServerProcess({ ...env, PORT: '0' }, { main: cmd[1], cwd: stage });
  t.teardown(() => server.stop());
  const url = server.url;
  const ready = await fetch(`${url}/readyz`);
  t.equal(ready.status, 200);
  t.equal(((await ready.json()) as { adapters: number }).adapters, 9);
  const gen = await fetch(`${url}/v1/tasks/define-prefix/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'ocean', max_tokens: 5, temperature: 0 }) });
  t.equal(gen.status, 200);
});
