import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServerProcess as spawnServer, type ServerProcess } from '../src/tools/server-process.js';

/** A redis-server of the test's own, on its own port, persisting to a temp dir so a restart keeps data. */
export class TestRedis {
  private proc: ChildProcess | null = null;
  readonly dir = mkdtempSync(join(tmpdir(), 'sps-redis-'));
  constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.proc = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--appendfsync', 'always', '--dir', this.dir], { stdio: 'ignore' });
    for (let i = 0; i < 100; i++) {
      if (await this.ping()) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('redis-server did not start');
  }

  private async ping(): Promise<boolean> {
    const { createConnection } = await import('node:net');
    return new Promise((resolve) => {
      const s = createConnection(this.port, '127.0.0.1');
      s.once('connect', () => {
        s.end('PING\r\n');
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
  }

  /** SIGSTOP: connected but silent, as a Redis that is paused or swapping. */
  pause(): void {
    this.proc?.kill('SIGSTOP');
  }

  resume(): void {
    this.proc?.kill('SIGCONT');
  }

  async stop(): Promise<void> {
    const p = this.proc;
    if (!p) return;
    await new Promise<void>((resolve) => {
      p.once('exit', () => resolve());
      p.kill('SIGTERM');
    });
    this.proc = null;
  }
}

/** Real server processes sharing the test's Redis, one worker thread each. */
export function startServerProcess(env: Record<string, string>): Promise<ServerProcess> {
  return spawnServer({ INTRA_OP_THREADS: '1', WORKERS: '1', ...env });
}
