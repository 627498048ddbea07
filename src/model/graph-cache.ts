import { closeSync, existsSync, mkdirSync, openSync, renameSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Checkpoint } from './checkpoint.js';
import { branchOnAdapters } from './adapter-ops.js';
import { ExternalData, GraphBuilder } from './onnx-builder.js';
import type { HeadMode } from './sampling-head.js';

/**
 * 'branched' (served): an If on `lora_ia3_rows` between two bodies, with and without the LoRA/IA3
 * ops (see branchOnAdapters). 'adapted' and 'plain': one body, for bench/lora.ts.
 */
export type GraphVariant = 'branched' | 'adapted' | 'plain';

/** The serialized graph; with `external`, its weights go there (each once, both bodies refer to it). */
export function buildGraph(ckpt: Checkpoint, variant: GraphVariant, external?: ExternalData, head: HeadMode = 'graph'): Uint8Array {
  const doc = `${ckpt.config.modelType} built by softprompt-server ${ckpt.arch.graphVersion} from checkpoint ${ckpt.hash}`;
  const body = (loraIa3: boolean) => {
    const g = new GraphBuilder(external);
    const opset = ckpt.arch.build(ckpt.config, ckpt.weights, g, loraIa3, head);
    return { opset, bytes: g.serialize(opset, doc) };
  };
  if (variant !== 'branched') return body(variant === 'adapted').bytes;
  const adapted = body(true);
  return branchOnAdapters(adapted.bytes, body(false).bytes, adapted.opset, doc);
}

/**
 * Returns the path of the ONNX graph for a checkpoint, building it once. The key covers the
 * checkpoint's content and the builder version, so a new checkpoint or builder never reuses a stale
 * graph. `head` 'host' (the plain-logits graph: test oracle, benchmarks) is cached apart. The weights go to a side file (`<graph>.data`, ONNX external data) as the builder streams
 * them, so building needs about one tensor's memory and a model of any size fits the format.
 */
export function cachedGraphPath(ckpt: Checkpoint, cacheDir: string, head: HeadMode = 'graph'): { path: string; built: boolean } {
  const path = join(cacheDir, `${ckpt.arch.graphVersion}${head === 'host' ? '-hosthead' : ''}-${ckpt.hash.slice(0, 16)}.onnx`);
  if (existsSync(path)) return { path, built: false };
  mkdirSync(cacheDir, { recursive: true });
  const dataPath = `${path}.data`;
  const tmp = `.${process.pid}.tmp`;
  const fd = openSync(dataPath + tmp, 'w');
  let graph: Uint8Array;
  try {
    graph = buildGraph(ckpt, 'branched', new ExternalData(fd, basename(dataPath)), head);
  } finally {
    closeSync(fd);
  }
  writeFileSync(path + tmp, graph);
  // The graph file appears last and atomically: a reader that sees it sees its whole side file.
  renameSync(dataPath + tmp, dataPath);
  renameSync(path + tmp, path);
  return { path, built: true };
}
