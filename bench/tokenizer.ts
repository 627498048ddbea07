/**
 * The tokenizer on the demo vocabulary: whether it gives the reference ids, whether it agrees with
 * @lenml/tokenizers (an independent implementation) on 10,000 lines of the task data, and how fast it
 * encodes, inline and through the worker, from short lines to 40,000-character inputs. The comparison
 * with the hand-written BPE this replaced is in bench/results/tokenizer.md.
 *   npm run build && node dist/bench/tokenizer.js
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TokenizerLoader } from '@lenml/tokenizers';
import { Tokenizer } from '../src/tokenizer/tokenizer.js';
import { printTable } from './table.js';

const DIR = process.env.MODEL_DIR ?? 'models/demo-gpt2';
const FIXTURES = join('test', 'fixtures');
const reference = JSON.parse(readFileSync(join(FIXTURES, 'reference', 'reference.json'), 'utf8')) as {
  tokenizer: { text: string; ids: number[] }[];
  cases: { text: string; ids: number[] }[];
};
const refCases = [...reference.tokenizer, ...reference.cases];

/** Every string field of every row of test/fixtures/data/*.jsonl, the first 10,000. */
function dataLines(n: number): string[] {
  const out: string[] = [];
  for (const f of readdirSync(join(FIXTURES, 'data')).filter((x) => x.endsWith('.jsonl')).sort()) {
    for (const line of readFileSync(join(FIXTURES, 'data', f), 'utf8').split('\n')) {
      if (!line) continue;
      for (const v of Object.values(JSON.parse(line) as Record<string, unknown>)) if (typeof v === 'string') out.push(v);
    }
  }
  return out.slice(0, n);
}

let seed = 7;
const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
const long = (n: number) => ({
  'random letters': Array.from({ length: n }, () => String.fromCharCode(97 + Math.floor(rnd() * 26))).join(''),
  spaces: ' '.repeat(n),
  "'é' repeated": 'é'.repeat(n),
});

interface Variant {
  name: string;
  make: () => { encode: (text: string) => number[] | Promise<number[]> };
}
const files = { tokenizerJSON: JSON.parse(readFileSync(join(DIR, 'tokenizer.json'), 'utf8')), tokenizerConfig: JSON.parse(readFileSync(join(DIR, 'tokenizer_config.json'), 'utf8')) };
const variants: Variant[] = [
  { name: '@huggingface/tokenizers, inline', make: () => { const t = Tokenizer.load(DIR, { inlineMaxChars: Infinity }); return { encode: (s) => t.encodeSync(s, { special: true }) }; } },
  { name: '@huggingface/tokenizers, worker (Tokenizer.encode)', make: () => { const t = Tokenizer.load(DIR, { inlineMaxChars: 0 }); return { encode: (s) => t.encode(s, { special: true }) }; } },
  { name: '@lenml/tokenizers', make: () => { const t = TokenizerLoader.fromPreTrained(files); return { encode: (s) => t.encode(s, { add_special_tokens: false }) }; } },
];

const lines = dataLines(10_000);
const chars = lines.reduce((n, s) => n + s.length, 0);
const oracle = variants[variants.length - 1].make();
const expected = lines.map((s) => oracle.encode(s) as number[]);
const same = (a: number[], b: number[]) => a.length === b.length && a.every((x, i) => x === b[i]);

const rows: (string | number)[][] = [];
const longRows: (string | number)[][] = [];
for (const v of variants) {
  const tok = v.make();
  let refOk = 0;
  for (const c of refCases) if (same(await tok.encode(c.text), c.ids)) refOk++;
  // Cold: a fresh instance (empty word cache); warm: the same lines again.
  const fresh = v.make();
  let t0 = performance.now();
  const got: number[][] = [];
  for (const s of lines) got.push(await fresh.encode(s));
  const cold = performance.now() - t0;
  t0 = performance.now();
  for (const s of lines) await fresh.encode(s);
  const warm = performance.now() - t0;
  const agree = got.filter((ids, i) => same(ids, expected[i])).length;
  rows.push([v.name, `${refOk}/${refCases.length}`, `${agree}/${lines.length}`, (chars / cold / 1e3).toFixed(2), (chars / warm / 1e3).toFixed(2)]);
  for (const n of [10_000, 40_000]) {
    for (const [kind, text] of Object.entries(long(n))) {
      const t = performance.now();
      await v.make().encode(text);
      longRows.push([v.name, kind, n, (performance.now() - t).toFixed(0)]);
    }
  }
}
console.log(`\n${lines.length} lines, ${chars} characters, tokenizer ${DIR}; ids compared with @lenml/tokenizers\n`);
printTable(['variant', 'reference ids', 'agree on lines', 'cold M chars/s', 'warm M chars/s'], rows);
console.log('\nOne long input, fresh instance (the worker row includes starting the worker)\n');
printTable(['variant', 'input', 'characters', 'ms'], longRows);
process.exit(0);
