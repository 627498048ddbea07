/**
 * kill -9 during uploads and replacements: a server process on a filesystem registry takes
 * concurrent uploads (new tasks and replacements) and is killed with SIGKILL at a random moment,
 * KILLS times. After every restart each task must be absent or complete — exactly one of the
 * versions that were sent for it, served as such — and the server must accept uploads.
 *   node dist/bench/reliability/kill9.js      # KILLS=50
 */
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { adapterVersion } from '../../src/adapters/format.js';
import { readAdapterFolder } from '../../src/adapters/fs-store.js';
import { startServerProcess } from '../../src/tools/server-process.js';
import { adaptersScratch, multipartBody } from './uploads.js';

const SOURCES = ['pos-prefix', 'kjv-prompt', 'pos-bitfit', 'fortune-ptuning'];
const TASKS = Array.from({ length: 6 }, (_, i) => `kill-${i}`);

export interface KillReport {
  kills: number;
  restarts: number;
  uploadsAnswered: number;
  tasksChecked: number;
  problems: string[];
}

export async function killLoop(root: string, kills: number, log: (s: string) => void = () => {}): Promise<KillReport> {
  const dir = adaptersScratch(root);
  const files = Object.fromEntries(SOURCES.map((s) => [s, readAdapterFolder(join(root, 'adapters', s))]));
  const versions = new Set(SOURCES.map((s) => adapterVersion(files[s])));
  const env = { ADMIN_TOKEN: 'kill-admin', ADAPTERS_DIR: dir, WORKERS: '1', INTRA_OP_THREADS: '1' };
  const auth = { authorization: 'Bearer kill-admin' };
  const report: KillReport = { kills: 0, restarts: 0, uploadsAnswered: 0, tasksChecked: 0, problems: [] };
  const upload = (url: string, task: string, source: string) => {
    const f = files[source];
    const { body, type } = multipartBody([
      { name: 'adapter_config.json', data: f.config, file: true },
      { name: 'adapter_model.safetensors', data: f.weights, file: true },
      ...(f.task ? [{ name: 'task.json', data: f.task, file: true }] : []),
    ]);
    return fetch(`${url}/v1/adapters/${task}`, { method: 'PUT', headers: { ...auth, 'content-type': type }, body: new Uint8Array(body) });
  };
  let server = await startServerProcess(env);
  for (let k = 0; k < kills; k++) {
    let running = true;
    const clients = Array.from({ length: 4 }, async (_, c) => {
      for (let i = 0; running; i++) {
        try {
          const res = await upload(server.url, TASKS[(c + i) % TASKS.length], SOURCES[(c * 7 + i) % SOURCES.length]);
          await res.arrayBuffer();
          report.uploadsAnswered++;
        } catch {
          return; // the process is gone
        }
      }
    });
    await new Promise((r) => setTimeout(r, 100 + Math.random() * 600));
    const exited = new Promise((r) => server.child.once('exit', r));
    server.child.kill('SIGKILL');
    await exited;
    running = false;
    await Promise.all(clients);
    report.kills++;
    server = await startServerProcess(env);
    report.restarts++;
    // Every task folder is absent or one complete version; the server serves exactly that version.
    for (const task of TASKS) {
      const onDisk = existsSync(join(dir, task)) ? adapterVersion(readAdapterFolder(join(dir, task))) : null;
      if (onDisk !== null && !versions.has(onDisk)) report.problems.push(`kill ${k}: ${task} on disk is a mix (${onDisk})`);
      const res = await fetch(`${server.url}/v1/adapters/${task}`, { headers: auth });
      const served = res.status === 200 ? ((await res.json()) as { version: string }).version : null;
      if (served !== onDisk) report.problems.push(`kill ${k}: ${task} served ${served}, on disk ${onDisk}`);
      report.tasksChecked++;
    }
    const leftovers = readdirSync(dir).filter((e) => e.startsWith('.'));
    if (leftovers.length > 0) report.problems.push(`kill ${k}: leftovers after restart: ${leftovers.join(', ')}`);
    const after = await upload(server.url, 'after-kill', SOURCES[k % SOURCES.length]);
    if (after.status !== 200 && after.status !== 201) report.problems.push(`kill ${k}: upload after restart answered ${after.status}`);
    await after.arrayBuffer();
    log(`kill ${k + 1}/${kills}: ${report.uploadsAnswered} uploads answered so far, ${report.problems.length} problems`);
  }
  await server.stop();
  return report;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { machineInfo } = await import('../harness.js');
  const kills = Number(process.env.KILLS ?? 50);
  const t0 = performance.now();
  const report = await killLoop(process.cwd(), kills, (s) => console.error(s));
  const seconds = (performance.now() - t0) / 1000;
  writeFileSync('bench/results/kill9.json', JSON.stringify({ machine: machineInfo(), seconds, ...report }, null, 2));
  console.log('| kill -9 | restarts | uploads answered before the kills | task states checked | absent-or-complete violations | upload after restart refused |');
  console.log('| ---: | ---: | ---: | ---: | ---: | ---: |');
  console.log(`| ${report.kills} | ${report.restarts} | ${report.uploadsAnswered} | ${report.tasksChecked} | ${report.problems.filter((p) => !p.includes('upload after')).length} | ${report.problems.filter((p) => p.includes('upload after')).length} |`);
  for (const p of report.problems) console.log(p);
}
