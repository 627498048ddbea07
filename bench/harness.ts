import { startServerProcess, type ServerProcess } from '../src/tools/server-process.js';
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { cpus } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { encodeSafetensors, parseSafetensors } from '../src/model/safetensors.js';

export const SUPPORTED = ['define-prefix', 'fortune-ptuning', 'kjv-prompt', 'pos-bitfit', 'pos-prefix', 'pos-prompt', 'pos-ptuning'];

/** Writes `n` distinct adapters into `dir`: the demo ones (`kinds`, in turn), each copy's weights perturbed by ±1%. */
export function writeAdapters(dir: string, n: number, source = 'adapters', kinds = SUPPORTED): string[] {
  mkdirSync(dir, { recursive: true });
  const names: string[] = [];
  for (let i = 0; i < n; i++) {
    const from = kinds[i % kinds.length];
    const name = i < kinds.length ? from : `${from}-v${i}`;
    const out = join(dir, name);
    cpSync(join(source, from), out, { recursive: true });
    if (i >= kinds.length) {
      const { tensors } = parseSafetensors(readFileSync(join(out, 'adapter_model.safetensors')));
      const perturbed: Record<string, { shape: number[]; data: Float32Array }> = {};
      let seed = i * 7919;
      for (const [k, t] of tensors) {
        const data = t.data.map((v) => {
          seed = (seed * 1103515245 + 12345) % 2 ** 31;
          return v * (1 + 0.02 * (seed / 2 ** 31 - 0.5));
        });
        perturbed[k] = { shape: t.shape, data };
      }
      writeFileSync(join(out, 'adapter_model.safetensors'), encodeSafetensors(perturbed));
    }
    names.push(name);
  }
  return names;
}

export { startServerProcess } from '../src/tools/server-process.js';

export function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** Resident memory of a process by kind of mapping, in bytes, from /proc/PID/smaps: which kind grows tells a leak from allocator behaviour. */
export interface MemoryBreakdown {
  rss: number;
  /** glibc's main arena (the brk heap). */
  brkHeap: number;
  /** glibc's per-thread arenas: anonymous mappings that start on a 64 MiB boundary (HEAP_MAX_SIZE on 64-bit). */
  arenas: number;
  arenaCount: number;
  /** Other anonymous mappings: malloc's mmap chunks (above the mmap threshold), V8 heaps, thread stacks. */
  otherAnon: number;
  otherAnonCount: number;
  /** Mapped files (libraries, the model graph if mapped). */
  file: number;
  anonHugePages: number;
}

export function memoryBreakdown(pid: number): MemoryBreakdown {
  const m: MemoryBreakdown = { rss: 0, brkHeap: 0, arenas: 0, arenaCount: 0, otherAnon: 0, otherAnonCount: 0, file: 0, anonHugePages: 0 };
  let kind: 'brk' | 'arena' | 'anon' | 'file' = 'file';
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      const start = BigInt('0x' + head[1]);
      const path = head[4];
      if (path === '[heap]') kind = 'brk';
      else if (path === '' && start % (64n << 20n) === 0n) kind = 'arena';
      else if (path === '' || path.startsWith('[anon')) kind = 'anon';
      else kind = 'file';
      continue;
    }
    const field = /^(Rss|AnonHugePages):\s+(\d+) kB/.exec(line);
    if (!field) continue;
    const bytes = Number(field[2]) * 1024;
    if (field[1] === 'AnonHugePages') {
      m.anonHugePages += bytes;
      continue;
    }
    m.rss += bytes;
    if (kind === 'brk') m.brkHeap += bytes;
    else if (kind === 'arena') {
      m.arenas += bytes;
      if (bytes > 0) m.arenaCount++;
    } else if (kind === 'anon') {
      m.otherAnon += bytes;
      if (bytes > 0) m.otherAnonCount++;
    } else m.file += bytes;
  }
  return m;
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Median (the mean of the middle two for an even count): what a table quotes from interleaved rounds. */
export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** "min–max" of a variant's rounds, so that a table shows how much the machine moved the number. */
export function spread(xs: number[], digits = 0): string {
  return `${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)}`;
}

/** One row per variant from its rounds: every numeric column the median of that column. */
export function medianRow(runs: WorkloadRow[]): WorkloadRow {
  const row = { ...runs[0] } as WorkloadRow & Record<string, unknown>;
  for (const [k, v] of Object.entries(runs[0])) if (typeof v === 'number') row[k] = median(runs.map((r) => (r as unknown as Record<string, number>)[k]));
  return row;
}

export function machineInfo(): Record<string, string | number> {
  return { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, node: process.version, onnxruntime: ort.env.versions.common, date: new Date().toISOString() };
}

/** Polls /healthz every `everyMs` until stopped; returns the latencies seen. */
export function healthProbe(url: string, everyMs = 50): { stop: () => number[] } {
  const latencies: number[] = [];
  let running = true;
  void (async () => {
    while (running) {
      const t0 = performance.now();
      try {
        await (await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(2000) })).text();
        latencies.push(performance.now() - t0);
      } catch {
        latencies.push(2000);
      }
      await new Promise((r) => setTimeout(r, everyMs));
    }
  })();
  return {
    stop: () => {
      running = false;
      return latencies;
    },
  };
}

/**
 * The load generator's HTTP client: node:http with keep-alive, reading only what it counts. It shares
 * the machine's cores with the server it measures, so it must be cheap: undici's `fetch` parses a
 * web stream per response, which is CPU the server then lacks. runWorkload reports the CPU of both.
 */
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

/** POSTs `body` as JSON; resolves with the response once its headers arrive (status checked by the caller). */
function post(url: string, path: string, body: object): Promise<http.IncomingMessage> {
  const u = new URL(path, url);
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } }, resolve);
    // A server that stops answering fails the benchmark rather than hanging it (fetch gave up after 300 s too).
    req.setTimeout(300_000, () => req.destroy(new Error(`POST ${path}: no data for 300 s`)));
    req.on('error', reject);
    req.end(payload);
  });
}

async function text(res: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

const TOKEN_EVENT = Buffer.from('data: {"token_id"');

/**
 * One streamed generate request: total latency, time to first token, tokens received (server-sent
 * events that carry a token). `onToken` gets the time each token event arrived.
 */
export async function streamGenerate(url: string, task: string, body: object, onToken?: (at: number) => void): Promise<{ latency: number; ttft: number; tokens: number }> {
  const t0 = performance.now();
  const res = await post(url, `/v1/tasks/${task}/generate`, { ...body, stream: true });
  if (res.statusCode !== 200) throw new Error(`generate ${task}: ${res.statusCode} ${await text(res)}`);
  let ttft = NaN;
  let tokens = 0;
  let rest: Buffer = Buffer.alloc(0);
  for await (const chunk of res) {
    const buf = rest.length > 0 ? Buffer.concat([rest, chunk as Buffer]) : (chunk as Buffer);
    let at = 0;
    for (let end; (end = buf.indexOf('\n\n', at)) >= 0; at = end + 2) {
      if (end - at >= TOKEN_EVENT.length && buf.compare(TOKEN_EVENT, 0, TOKEN_EVENT.length, at, at + TOKEN_EVENT.length) === 0) {
        if (tokens === 0) ttft = performance.now() - t0;
        tokens++;
        onToken?.(performance.now());
      }
    }
    rest = buf.subarray(at);
  }
  return { latency: performance.now() - t0, ttft, tokens };
}

/** One generate request, not streamed: total latency and the tokens in its response. */
export async function generate(url: string, task: string, body: object): Promise<{ latency: number; tokens: number }> {
  const t0 = performance.now();
  const res = await post(url, `/v1/tasks/${task}/generate`, { ...body, stream: false });
  const json = await text(res);
  if (res.statusCode !== 200) throw new Error(`generate ${task}: ${res.statusCode} ${json}`);
  return { latency: performance.now() - t0, tokens: (JSON.parse(json) as { usage: { completion_tokens: number } }).usage.completion_tokens };
}

export const POLICIES = [
  { name: '(a) one at a time', env: { MAX_BATCH_SIZE: '1', WORKERS: '1' } as Record<string, string> },
  { name: '(b) same-task batching', env: { BATCH_POLICY: 'same-task' } as Record<string, string> },
  { name: '(c) mixed-task batching', env: { BATCH_POLICY: 'mixed' } as Record<string, string> },
];

export interface WorkloadRow {
  policy: string;
  tasks: number;
  clients: number;
  reqPerS: number;
  tokPerS: number;
  p50: number;
  p99: number;
  ttftP50: number;
  ttftP99: number;
  healthP50: number;
  healthP99: number;
  /** KV cache bytes the workers copied, per generated token (joins into slots and compactions). */
  kvBytesPerToken: number;
  /** CPU time over the run, in cores: the server process (event loop, workers) and this load generator. */
  serverCores: number;
  clientCores: number;
}

/** CPU seconds a process has used (user + system), from /proc (Linux); NaN elsewhere. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100 on Linux)
  } catch {
    return NaN;
  }
}

/** Prompts: the start of training-split verses and fortunes, 4 to 12 words. */
export function benchPrompts(fixtures: string, n: number): string[] {
  const texts = ['kjv.jsonl', 'fortunes.jsonl'].flatMap((f) => readFileSync(join(fixtures, 'data', f), 'utf8').split('\n').filter(Boolean).slice(2000, 2000 + n));
  return Array.from({ length: n }, (_, i) => (JSON.parse(texts[(i * 2) % texts.length]).text as string).split(/\s+/).slice(0, 4 + (i % 9)).join(' '));
}

/**
 * One fixed workload against a fresh server process: `prompts.length` streamed generate requests of
 * `tokens` new tokens, `clients` at a time, spread over `tasks` (adapter folders in `adapterDir`);
 * greedy unless `sampling` gives request i other sampling fields.
 */
export async function runWorkload(o: { policy: (typeof POLICIES)[number]; adapterDir: string; tasks: string[]; clients: number; prompts: string[]; tokens: number; sampling?: (i: number) => object }): Promise<WorkloadRow> {
  const server = await startServerProcess({ ADAPTERS_DIR: o.adapterDir, MAX_QUEUE: '4096', ...o.policy.env });
  try {
    return await timedWorkload(server, o);
  } finally {
    await server.stop(); // also when a request failed: no server left running beside the next one
  }
}

/** The server's KV-copied counter: it runs from the server's start, so the timed part is a difference. */
async function kvCopiedBytes(url: string): Promise<number> {
  const metrics = await (await fetch(`${url}/metrics`)).text();
  return Number(/^sps_kv_copied_bytes_total (\S+)/m.exec(metrics)?.[1] ?? NaN);
}

async function timedWorkload(server: ServerProcess, o: Parameters<typeof runWorkload>[0]): Promise<WorkloadRow> {
  const body = (i: number) => ({ prompt: o.prompts[i], raw: true, max_tokens: o.tokens, temperature: 0, ignore_eos: true, ...o.sampling?.(i) });
  // Warm-up: two waves at the measured concurrency, so that V8 has compiled the server's hot paths
  // (its optimising compiler otherwise runs on background threads during the timed run of a fresh process).
  const wave = Math.min(o.clients, o.prompts.length);
  for (let w = 0; w < 2; w++) await Promise.all(Array.from({ length: wave }, (_, i) => streamGenerate(server.url, o.tasks[i % o.tasks.length], body(i))));
  const kv0 = await kvCopiedBytes(server.url);
  const probe = healthProbe(server.url);
  const results: { latency: number; ttft: number; tokens: number }[] = [];
  let next = 0;
  const t0 = performance.now();
  const cpu0 = { server: cpuSeconds(server.pid), client: process.cpuUsage() };
  await Promise.all(
    Array.from({ length: o.clients }, async () => {
      while (next < o.prompts.length) {
        const i = next++;
        results.push(await streamGenerate(server.url, o.tasks[i % o.tasks.length], body(i)));
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const client = process.cpuUsage(cpu0.client);
  const serverCores = (cpuSeconds(server.pid) - cpu0.server) / seconds;
  const health = probe.stop();
  const kvCopied = (await kvCopiedBytes(server.url)) - kv0;
  const col = (k: 'latency' | 'ttft') => results.map((r) => r[k]);
  const tokens = results.reduce((s, r) => s + r.tokens, 0);
  return {
    policy: o.policy.name,
    tasks: o.tasks.length,
    clients: o.clients,
    reqPerS: o.prompts.length / seconds,
    tokPerS: tokens / seconds,
    p50: percentile(col('latency'), 50),
    p99: percentile(col('latency'), 99),
    ttftP50: percentile(col('ttft'), 50),
    ttftP99: percentile(col('ttft'), 99),
    healthP50: percentile(health, 50),
    healthP99: percentile(health, 99),
    kvBytesPerToken: kvCopied / tokens,
    serverCores,
    clientCores: (client.user + client.system) / 1e6 / seconds,
  };
}
