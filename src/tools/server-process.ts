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
  let buf = ''; // the log's tail until the server listens, for the error when it does not
  let onData = (_: Buffer) => {};
  let onExit = (_: number | null) => {};
  const listening = new Promise<string>((resolve, reject) => {
    onData = (d) => {
      buf += d.toString();
      const m = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(buf);
      if (m) resolve(m[1]);
      buf = buf.slice(-8000);
    };
    onExit = (code) => reject(new Error(`server exited with ${code}: ${buf.slice(-2000)}`));
  });
  child.stdout!.on('data', onData);
  child.once('exit', onExit);
  let url: string;
  try {
    url = await listening;
  } finally {
    // From here the log is drained and dropped: a reader that kept it (and searched it on every
    // chunk) would cost this process CPU that a benchmark's clients need, and a slow reader stalls
    // the server's synchronous log writes on a full pipe.
    child.stdout!.off('data', onData);
    child.off('exit', onExit);
    child.stdout!.resume();
  }
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
