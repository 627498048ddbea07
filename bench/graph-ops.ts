/**
 * Which ops the built graph has, and what ONNX Runtime's optimiser (level 'all') turns them into:
 * the evidence behind the plain-ops design note in src/model/architectures/gpt2.ts.
 *   npm run build && node dist/bench/graph-ops.js
 */
import ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadBaseModel } from '../src/model/base-model.js';
import { printTable } from './table.js';

const model = loadBaseModel(process.env.MODEL_DIR ?? 'models/demo-gpt2', process.env.CACHE_DIR ?? '.cache');
const optimized = join(mkdtempSync(join(tmpdir(), 'graph-ops-')), 'optimized.onnx');
ort.env.logLevel = 'error';
await ort.InferenceSession.create(model.graphPath, { graphOptimizationLevel: 'all', optimizedModelFilePath: optimized });
const count = (file: string) => {
  const counts = new Map<string, number>();
  for (const n of onnxProto.onnx.ModelProto.decode(readFileSync(file)).graph!.node!) {
    const key = `${n.domain ? `${n.domain}:` : ''}${n.opType}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return counts;
};
const before = count(model.graphPath);
const after = count(optimized);
const ops = [...new Set([...before.keys(), ...after.keys()])].sort();
printTable(['op', 'built', `after ORT ${ort.env.versions.common} 'all'`], ops.map((op) => [op, before.get(op) ?? 0, after.get(op) ?? 0]));
