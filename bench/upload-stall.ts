/**
 * What a large adapter upload costs the streams a replica is serving meanwhile: streaming clients
 * generate without pause while large LoRA adapters (random factors at a high rank; each upload a
 * new version) are uploaded one after another, and the table reports the gaps between consecutive
 * tokens of the streams during the uploads, /healthz latency, and each upload's time to its 200.
 * Parsing an adapter on the event loop stalls every stream for the length of the parse. The uploads
 * come from a child process, so that this process's event loop only reads the streams.
 *   node dist/bench/upload-stall.js [--rounds 3] [--rank 1024] [--uploads 4] [--clients 8] [--baseline /path/to/other/checkout]
 * `--baseline` adds the build of another checkout (its dist/src/main.js), measured in the same run.
 * `--redis redis://…` runs two replicas sharing that Redis (a fresh key prefix per run, deleted
 * after): the uploads go to one, the streams to the other, which loads each new version on its
 * announcement; the window then runs 2 s past the last upload's answer. With `--streams-on uploader`
 * the streams and probes go to the replica that takes the uploads (and stores them in Redis).
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { Redis } from 'ioredis';
import { encodeSafetensors, parseSafetensors } from '../src/model/safetensors.js';
import { benchPrompts, healthProbe, machineInfo, percentile, startServerProcess, streamGenerate, writeAdapters } from './harness.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    rank: { type: 'string', default: '1024' },
    uploads: { type: 'string', default: '4' },
    clients: { type: 'string', default: '8' },
    baseline: { type: 'string' },
    /** Two replicas sharing this Redis: uploads go to one, the streams and probes to the other. */
    redis: { type: 'string' },
    /** With --redis: `follower` (default) or `uploader`, the replica the streams and probes go to. */
    'streams-on': { type: 'string', default: 'follower' },
    fixtures: { type: 'string', default: 'test/fixtures' },
    out: { type: 'string', default: join(process.env.BENCH_OUT ?? 'bench/results', 'upload-stall.json') },
  },
});
const ROUNDS = Number(args.rounds);
const RANK = Number(args.rank);
const UPLOADS = Number(args.uploads);
const CLIENTS = Number(args.clients);
const TOKEN = 'bench-admin';
const execFileAsync = promisify(execFile);
if (!['follower', 'uploader'].includes(args['streams-on']!)) throw new Error('--streams-on: follower or uploader');
const STREAMS_ON_UPLOADER = args.redis !== undefined && args['streams-on'] === 'uploader';

interface Variant {
  name: string;
  main?: string;
  cwd?: string;
}
const variants: Variant[] = [{ name: 'this build' }];
if (args.baseline) {
  const dir = resolve(args.baseline);
  variants.unshift({ name: 'baseline build', main: join(dir, 'dist/src/main.js'), cwd: dir });
}

const work = mkdtempSync(join(tmpdir(), 'bench-upload-'));
const tasks = writeAdapters(join(work, 'tasks'), 4);

/** The shipped pos-lora at rank RANK, random factors: the weights of a large LoRA. */
function bigLora(): { config: Record<string, unknown>; weights: Buffer } {
  const src = parseSafetensors(readFileSync('adapters/pos-lora/adapter_model.safetensors')).tensors;
  const out: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [name, t] of src) {
    const shape = t.shape.map((d) => (d === 8 ? RANK : d));
    out[name] = { shape, data: new Float32Array(shape[0] * shape[1]).map(() => (Math.random() - 0.5) * 0.01) };
  }
  return { config: { ...JSON.parse(readFileSync('adapters/pos-lora/adapter_config.json', 'utf8')), r: RANK }, weights: Buffer.from(encodeSafetensors(out)) };
}
const lora = bigLora();
const MB = lora.weights.length / 2 ** 20;

/**
 * One upload, from a child process: building and sending a 44 MB multipart body here would stall
 * this process's own event loop, which times the tokens. Each upload is a new version (lora_alpha
 * differs, so the content hash does).
 */
const weightsPath = join(work, 'adapter_model.safetensors');
writeFileSync(weightsPath, lora.weights);
const UPLOADER = `
const [url, token, config, weights] = process.argv.slice(1);
const form = new FormData();
form.append('adapter_config.json', new Blob([config]), 'adapter_config.json');
form.append('adapter_model.safetensors', new Blob([require('node:fs').readFileSync(weights)]), 'adapter_model.safetensors');
const t0 = performance.now();
fetch(url, { method: 'PUT', headers: { authorization: 'Bearer ' + token }, body: form }).then(async (res) => {
  const body = await res.text();
  if (res.status >= 300) throw new Error('upload ' + res.status + ': ' + body);
  console.log(performance.now() - t0);
});`;
async function upload(url: string, i: number): Promise<number> {
  const config = JSON.stringify({ ...lora.config, lora_alpha: 16 + i });
  const { stdout } = await execFileAsync(process.execPath, ['-e', UPLOADER, `${url}/v1/adapters/big-lora`, TOKEN, config, weightsPath]);
  return Number(stdout.trim());
}

interface Sample {
  uploadMs: number[];
  /** Gaps between consecutive tokens of a stream that ended inside the upload window. */
  gaps: number[];
  healthz: number[];
}

async function run(v: Variant, round: number): Promise<Sample> {
  const prompts = benchPrompts(args.fixtures!, 64);
  const prefix = `bench-upload-${process.pid}-${round}-${v.name.replace(/\W/g, '')}:`;
  const env = { ADAPTERS_DIR: join(work, 'tasks'), MODEL_DIR: resolve('models/demo-gpt2'), CACHE_DIR: resolve('.cache'), ADMIN_TOKEN: TOKEN, ...(args.redis && { REDIS_URL: args.redis, REDIS_PREFIX: prefix }) };
  const follower = await startServerProcess(env, { main: v.main, cwd: v.cwd });
  const uploader = args.redis ? await startServerProcess(env, { main: v.main, cwd: v.cwd }) : follower;
  const server = STREAMS_ON_UPLOADER ? uploader : follower; // the one streamed from and probed
  try {
    await upload(uploader.url, -1); // the first upload starts whatever the server starts lazily
    let window: [number, number] = [Infinity, Infinity];
    const gaps: number[] = [];
    let streaming = true;
    const clients = Array.from({ length: CLIENTS }, async (_, c) => {
      for (let i = c; streaming; i += CLIENTS) {
        let last = NaN;
        await streamGenerate(server.url, tasks[i % tasks.length], { prompt: prompts[i % prompts.length], raw: true, max_tokens: 64, temperature: 0, ignore_eos: true }, (at) => {
          if (last >= window[0] && at <= window[1]) gaps.push(at - last);
          last = at;
        });
      }
    });
    await new Promise((r) => setTimeout(r, 500)); // the streams are running
    const probe = healthProbe(server.url, 20);
    window = [performance.now(), Infinity];
    const uploadMs: number[] = [];
    for (let i = 0; i < UPLOADS; i++) uploadMs.push(await upload(uploader.url, round * UPLOADS + i));
    if (args.redis) await new Promise((r) => setTimeout(r, 2000)); // the other replica loads the last one
    window[1] = performance.now();
    const healthz = probe.stop();
    streaming = false;
    await Promise.all(clients);
    return { uploadMs, gaps, healthz };
  } finally {
    await Promise.all([follower.stop(), uploader.stop()]);
    if (args.redis) await dropKeys(args.redis, prefix);
  }
}

async function dropKeys(url: string, prefix: string): Promise<void> {
  const redis = new Redis(url);
  const keys = await redis.keys(`${prefix}*`);
  if (keys.length) await redis.del(...keys);
  redis.disconnect();
}

const samples = new Map<string, Sample[]>();
for (let r = 0; r < ROUNDS; r++) {
  for (let k = 0; k < variants.length; k++) {
    const v = variants[(k + r) % variants.length];
    const s = await run(v, r);
    samples.set(v.name, [...(samples.get(v.name) ?? []), s]);
    console.error(`round ${r + 1}, ${v.name}: upload p50 ${percentile(s.uploadMs, 50).toFixed(0)} ms, token gap max ${Math.max(...s.gaps).toFixed(0)} ms`);
  }
}
rmSync(work, { recursive: true, force: true });

const info = machineInfo();
const med = (xs: number[]) => percentile(xs, 50);
const span = (xs: number[]) => `${med(xs).toFixed(0)} (${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)})`;
const setup = !args.redis ? '' : STREAMS_ON_UPLOADER ? ' (two replicas through Redis: uploads and streams on one)' : ' (two replicas through Redis: uploads to one, streams on the other)';
console.log(`\nupload stall${setup}: ${UPLOADS} uploads of a ${MB.toFixed(1)} MB LoRA (rank ${RANK}) one after another while ${CLIENTS} clients stream 64-token requests; ${ROUNDS} interleaved rounds; per round the token gaps' p99 and max, then median (min–max) over rounds; ${info.cpu}, ${info.cores} cores\n`);
const rows = variants.map((v) => {
  const xs = samples.get(v.name)!;
  return {
    v,
    upload: xs.map((x) => med(x.uploadMs)),
    gap50: xs.map((x) => percentile(x.gaps, 50)),
    gap99: xs.map((x) => percentile(x.gaps, 99)),
    gapMax: xs.map((x) => Math.max(...x.gaps)),
    health: xs.map((x) => Math.max(...x.healthz)),
  };
});
printTable(
  ['variant', 'upload ms (p50)', 'token gap p50 ms', 'token gap p99 ms', 'token gap max ms', 'healthz max ms'],
  rows.map((r) => [r.v.name, span(r.upload), span(r.gap50), span(r.gap99), span(r.gapMax), span(r.health)]),
);
if (rows.length === 2) {
  const [a, b] = rows;
  console.log(`\nbaseline / this build (medians): token gap p99 ${(med(a.gap99) / med(b.gap99)).toFixed(2)}×, max ${(med(a.gapMax) / med(b.gapMax)).toFixed(2)}×, healthz max ${(med(a.health) / med(b.health)).toFixed(2)}×, upload ${(med(a.upload) / med(b.upload)).toFixed(2)}×`);
}
mkdirSync(join(args.out!, '..'), { recursive: true });
// Each run's gaps as their count and percentiles (the raw gaps run to tens of thousands).
const summary = (x: Sample) => ({ uploadMs: x.uploadMs, gapCount: x.gaps.length, gapP50: percentile(x.gaps, 50), gapP99: percentile(x.gaps, 99), gapMax: Math.max(...x.gaps), healthzMax: Math.max(...x.healthz) });
const runs = Object.fromEntries([...samples].map(([name, xs]) => [name, xs.map(summary)]));
writeFileSync(args.out!, JSON.stringify({ ...info, rounds: ROUNDS, rank: RANK, mb: MB, uploads: UPLOADS, clients: CLIENTS, runs }, null, 2));
