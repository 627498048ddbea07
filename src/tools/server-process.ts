import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface ServerProcess {
  url: string;
  pid: number;
  child: ChildProcess;
  /** SIGTERM, then resolves when the process has exited. */
  stop: () => Promise<void>;
}

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'main.js');

/**
 * Starts the server binary as a child process (benchmarks and multi-process tests use it) on a free
 * loopback port, and resolves with its URL once it listens. `main` and `cwd` default to this build.
 */
export async function startServerProcess(env: Record<string, string>, o: { main?: string; cwd?: string; nodeArgs?: string[] } = {}): Promise<ServerProcess> {
  const child = spawn(process.execPath, [...(o.nodeArgs ?? []), o.main ?? MAIN], {
    cwd: o.cwd,
    env: { ...process.env, PORT: '0', LOG_LEVEL: 'info', ...env, HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const url = await new Promise<string>((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(buf);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`server exited with ${code}: ${buf.slice(-2000)}`)));
  });
  child.stdout!.resume();
  return {
    url,
    pid: child.pid!,
    child,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}
