/**
 * Evaluation harness: scores the held-out splits of test/fixtures/data (copied from the shared ground truth by scripts/sync-fixtures.sh) through the HTTP API only
 * (classify, score), and writes bench/results/eval.json with the keys of reference/table.json.
 *   npm run eval [-- --url http://host:port] [--pos-rows 1000] [--loss-rows 400] [--smoke]
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../src/config.js';
import { createServer } from '../src/server.js';
import { pino } from 'pino';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    'pos-rows': { type: 'string', default: '1000' },
    'loss-rows': { type: 'string', default: '400' },
    smoke: { type: 'boolean', default: false },
    fixtures: { type: 'string', default: 'test/fixtures' },
    out: { type: 'string', default: 'bench/results/eval.json' },
  },
});
const posRows = args.smoke ? 40 : Number(args['pos-rows']);
const lossRows = args.smoke ? 12 : Number(args['loss-rows']);
const CONCURRENCY = 8;

function readJsonl<T>(file: string, n: number): T[] {
  return readFileSync(join(args.fixtures!, 'data', file), 'utf8').split('\n').filter(Boolean).slice(0, n).map((l) => JSON.parse(l) as T);
}

async function post(url: string, body: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, json: await res.json() };
}

/** Runs `work` over items with a bounded number of requests in flight. */
async function pool<T, R>(items: T[], work: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await work(items[i]);
    }
  }));
  return out;
}

const TRAINABLE: Record<string, number> = {};
const table = JSON.parse(readFileSync(join(args.fixtures!, 'reference', 'table.json'), 'utf8')) as Record<string, { score: number; trainable_params: number }>;
for (const [k, v] of Object.entries(table)) TRAINABLE[k] = v.trainable_params;

let base = args.url;
let close = async () => {};
if (!base) {
  const server = await createServer(loadConfig({ ...process.env, PORT: '0' }), pino({ level: 'error' }));
  await server.app.listen({ port: 0, host: '127.0.0.1' });
  base = `http://127.0.0.1:${(server.app.server.address() as { port: number }).port}`;
  close = server.close;
}

const results: Record<string, { score: number; trainable_params: number; rows: number }> = {};
const METHOD: Record<string, string> = { prompt: 'prompt', ptuning: 'ptuning', prefix: 'prefix', bitfit: 'bitfit', lora: 'lora', ia3: 'ia3' };

// pos: accuracy of classify over the first rows of the evaluation split.
const pos = readJsonl<{ word: string; label: string }>('pos.jsonl', posRows);
const labels = ['noun', 'verb', 'adjective', 'adverb'];
const chunks: { word: string; label: string }[][] = [];
for (let i = 0; i < pos.length; i += 50) chunks.push(pos.slice(i, i + 50));
for (const task of ['base', ...Object.keys(METHOD).map((m) => `pos-${m}`)]) {
  const t0 = performance.now();
  const answers = await pool(chunks, (chunk) =>
    post(`${base}/v1/tasks/${task}/classify`, { input: chunk.map((r) => r.word), ...(task === 'base' ? { labels, prompt_template: '{text} ->' } : {}) }),
  );
  if (answers.some((a) => a.status !== 200)) {
    console.log(`pos: ${task} not served (${answers.find((a) => a.status !== 200)!.json.error?.code})`);
    continue;
  }
  const predicted = answers.flatMap((a) => a.json.results.map((r: { label: string }) => r.label));
  const correct = predicted.filter((p, i) => p === pos[i].label).length;
  const key = task === 'base' ? 'pos/frozen' : `pos/${task.slice(4)}`;
  results[key] = { score: correct / pos.length, trainable_params: TRAINABLE[key] ?? 0, rows: pos.length };
  console.log(`pos: ${task} ${(correct / pos.length).toFixed(3)} over ${pos.length} rows in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

// pos: a prompt ensemble of every pos adapter the server serves (equal weights), on the same rows.
// Reported as measured, next to its members: an ensemble need not beat its best member.
const members = Object.keys(METHOD).map((m) => `pos-${m}`).filter((task) => results[`pos/${task.slice(4)}`] !== undefined);
if (members.length >= 2) {
  const t0 = performance.now();
  const answers = await pool(chunks, (chunk) => post(`${base}/v1/ensembles/classify`, { tasks: members, input: chunk.map((r) => r.word) }));
  if (answers.every((a) => a.status === 200)) {
    const predicted = answers.flatMap((a) => a.json.results.map((r: { label: string }) => r.label));
    const correct = predicted.filter((p, i) => p === pos[i].label).length;
    const params = members.reduce((n, task) => n + (TRAINABLE[`pos/${task.slice(4)}`] ?? 0), 0);
    results['pos/ensemble'] = { score: correct / pos.length, trainable_params: params, rows: pos.length };
    console.log(`pos: ensemble of ${members.join(', ')} ${(correct / pos.length).toFixed(3)} over ${pos.length} rows in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  } else console.log(`pos: ensemble failed (${answers.find((a) => a.status !== 200)!.json.error?.code})`);
}

// Mean loss per token of completion + end-of-text, with and without each task's adapter.
const loss = [
  { name: 'define', file: 'defs.jsonl', adapter: 'define-prefix', method: 'prefix', row: (r: any) => ({ prompt: `${r.word}:`, completion: ` ${r.gloss}` }) },
  { name: 'kjv', file: 'kjv.jsonl', adapter: 'kjv-prompt', method: 'prompt', row: (r: any) => ({ prompt: '', completion: r.text }) },
  { name: 'fortune', file: 'fortunes.jsonl', adapter: 'fortune-ptuning', method: 'ptuning', row: (r: any) => ({ prompt: '', completion: r.text }) },
];
for (const d of loss) {
  const rows = readJsonl<any>(d.file, lossRows).map(d.row);
  for (const [task, key] of [['base', `${d.name}/frozen`], [d.adapter, `${d.name}/${d.method}`]]) {
    // PyTorch's table truncated each example to 128 tokens (completion + end-of-text), as its tokenizer did.
    const answers = await pool(rows, (r) => post(`${base}/v1/tasks/${task}/score`, { ...r, raw: true, eos: true, max_length: 128 }));
    if (answers.some((a) => a.status !== 200)) {
      console.log(`${d.name}: ${task} failed (${answers.find((a) => a.status !== 200)!.json.error?.code})`);
      continue;
    }
    const nll = -answers.reduce((s, a) => s + a.json.logprob, 0);
    const tokens = answers.reduce((s, a) => s + a.json.tokens, 0);
    results[key] = { score: nll / tokens, trainable_params: TRAINABLE[key] ?? 0, rows: rows.length };
    console.log(`${d.name}: ${task} ${(nll / tokens).toFixed(4)} nats/token over ${rows.length} rows (${tokens} tokens)`);
  }
}
await close();

const BASE_PARAMS = 4_339_200;
const rowsOut = Object.entries(results).map(([k, v]) => {
  const ref = table[k]?.score;
  const agree = ref === undefined ? '-' : Math.abs(v.score - ref) <= 0.01 ? 'yes' : 'no';
  return [k, v.trainable_params, `${((100 * v.trainable_params) / BASE_PARAMS).toFixed(3)}%`, v.score.toFixed(4), ref === undefined ? '-' : ref.toFixed(4), agree];
});
console.log();
printTable(['task/method', 'trainable params', 'share of model', 'score (ours)', 'score (PyTorch)', 'within ±0.01'], rowsOut);
mkdirSync(join(args.out!, '..'), { recursive: true });
writeFileSync(args.out!, JSON.stringify(Object.fromEntries(Object.entries(results).map(([k, v]) => [k, { score: v.score, trainable_params: v.trainable_params }])), null, 2) + '\n');
