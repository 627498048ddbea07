/**
 * Diagnostic for a defect in ../shared/reference: its pos label scores for prompt-tuning and
 * P-tuning adapters read the logits num_virtual_tokens positions too early (inside the soft prompt).
 * Those logits do not depend on the input, so every word gets the same scores. This script scores
 * the pos split that way and prints the accuracy it gives, to compare with table.json.
 *   npm run build && node dist/bench/reference-offset.js
 */
import ort from 'onnxruntime-node';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { adapterParser } from '../src/adapters/format.js';
import { readAdapterFolder } from '../src/adapters/fs-store.js';
import { FeedContext } from '../src/executor/model-constants.js';
import { prefillFeeds } from '../src/executor/prefill.js';
import { logSumExp } from '../src/executor/sampler.js';
import { loadBaseModel } from '../src/model/base-model.js';

const shared = process.env.SHARED_DIR ?? '../shared';
const model = loadBaseModel('models/demo-gpt2', '.cache');
const parse = adapterParser(model);
const session = await ort.InferenceSession.create(model.graphPath);
const ctx = new FeedContext(model.tensors);
const V = model.config.vocabSize;
const rows = readFileSync(join(shared, 'data', 'pos.jsonl'), 'utf8').split('\n').filter(Boolean).slice(0, 1000).map((l) => JSON.parse(l) as { word: string; label: string });
const labels = ['noun', 'verb', 'adjective', 'adverb'];
const table = JSON.parse(readFileSync(join(shared, 'reference', 'table.json'), 'utf8'));
for (const name of ['pos-prompt', 'pos-ptuning']) {
  const a = parse(name, readAdapterFolder(join('adapters', name))).tensors;
  const n = a.virtualTokens;
  // One pass gives the logits at every virtual position: they depend on the soft prompt alone.
  const out = await session.run(prefillFeeds(ctx, [{ adapter: a, tokens: [0], logitAt: Array.from({ length: n }, (_, i) => i) }]).feeds);
  const logits = out.logits.data as Float32Array;
  const logprob = (k: number, id: number) => {
    const row = logits.subarray(k * V, (k + 1) * V);
    return row[id] - logSumExp(row);
  };
  let correct = 0;
  for (const r of rows) {
    const p = model.tokenizer.encode(`${r.word} ->`);
    const score = (w: string) => model.tokenizer.encode(` ${w}`).reduce((s, id, j) => s + logprob(p.length - 1 + j, id), 0);
    if (labels.reduce((b, w) => (score(w) > score(b) ? w : b)) === r.label) correct++;
  }
  const key = `pos/${name.slice(4)}`;
  console.log(`${name}: accuracy with logits read ${n} positions early = ${(correct / rows.length).toFixed(3)}; table.json ${key} = ${table[key].score}`);
}
