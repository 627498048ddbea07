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
const dir = mkdtempSync(join(tmpdir(), 'graph-ops-'));
ort.env.logLevel = 'error';
/** Ops by type, those of subgraphs (an If's branches) included, each branch counted. */
const count = (file: string) => {
  const counts = new Map<string, number>();
  const walk = (g: onnxProto.onnx.IGraphProto) => {
    for (const n of g.node ?? []) {
      const key = `${n.domain ? `${n.domain}:` : ''}${n.opType}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
      for (const a of n.attribute ?? []) {
        if (a.g) walk(a.g);
        for (const sub of a.graphs ?? []) walk(sub);
      }
    }
  };
  walk(onnxProto.onnx.ModelProto.decode(readFileSync(file)).graph!);
  return counts;
};
/** The graph as built and as ONNX Runtime's optimiser leaves it. */
async function both(path: string, name: string) {
  const optimized = join(dir, `${name}.onnx`);
  await ort.InferenceSession.create(path, { graphOptimizationLevel: 'all', optimizedModelFilePath: optimized });
  return { built: count(path), after: count(optimized) };
}
// The full graph (an If: LoRA/IA3 rows or not, both branches counted) and the base graph (rows with no BitFit, LoRA or IA3).
const graphs = { full: await both(model.graphPath, 'full'), ...(model.baseGraphPath ? { base: await both(model.baseGraphPath, 'base') } : {}) };
const ops = [...new Set(Object.values(graphs).flatMap((g) => [...g.built.keys(), ...g.after.keys()]))].sort();
const version = ort.env.versions.common;
printTable(
  ['op', ...Object.keys(graphs).flatMap((k) => [`${k}: built`, `${k}: after ORT ${version} 'all'`])],
  ops.map((op) => [op, ...Object.values(graphs).flatMap((g) => [g.built.get(op) ?? 0, g.after.get(op) ?? 0])]),
);
