import { closeSync, existsSync, mkdirSync, openSync, renameSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Checkpoint } from './checkpoint.js';
import { branchOnAdapters } from './adapter-ops.js';
import { ExternalData, GraphBuilder } from './onnx-builder.js';
import type { RowParams } from './architectures/architecture.js';
import type { HeadMode } from './sampling-head.js';

/**
 * The base graph is built (and opened by each worker) only below this many bytes of float32 weights.
 * It saves a fixed cost per step (the If and 31 inputs on GPT-2), which matters only for small
 * models, where op dispatch is a large part of a step; each worker's session of it
 * prepacks its own copy of the weights, and building it reads every weight once more.
 */
export const BASE_GRAPH_BELOW_BYTES = 256 * 1024 * 1024;

function float32Bytes(ckpt: Checkpoint): number {
  let n = 0;
  for (const shape of ckpt.arch.weightShapes(ckpt.config).values()) n += shape.reduce((a, b) => a * b, 1);
  return 4 * n;
}

/**
 * 'branched' (the full graph): an If on `lora_ia3_rows` between two bodies, with and without the
 * LoRA/IA3 ops (see branchOnAdapters), both with per-row bias inputs. 'base': one body with the
 * checkpoint's biases as constants and no per-row parameters, for runs whose rows carry no BitFit,
 * LoRA or IA3 (base, prompt tuning, P-tuning, prefix tuning). 'adapted' and 'plain': one body of the
 * full graph, for bench/lora.ts.
 */
export type GraphVariant = 'branched' | 'base' | 'adapted' | 'plain';

/** The serialized graph; with `external`, its weights go there (each once, every body refers to it). */
export function buildGraph(ckpt: Checkpoint, variant: GraphVariant, external?: ExternalData, head: HeadMode = 'graph'): Uint8Array {
  const doc = `${ckpt.config.modelType} ${variant} graph built by softprompt-server ${ckpt.arch.graphVersion} from checkpoint ${ckpt.hash}`;
  const body = (rows: RowParams) => {
    const g = new GraphBuilder(external);
    const opset = ckpt.arch.build(ckpt.config, ckpt.weights, g, rows, head);
    return { opset, bytes: g.serialize(opset, doc) };
  };
  if (variant === 'base') return body('none').bytes;
  if (variant !== 'branched') return body(variant === 'adapted' ? 'lora-ia3' : 'bias').bytes;
  const adapted = body('lora-ia3');
  return branchOnAdapters(adapted.bytes, body('bias').bytes, adapted.opset, doc);
}

export interface GraphPaths {
  /** The full graph: every row kind. */
  path: string;
  /** The base graph (rows without BitFit, LoRA or IA3), beside it, reading the same weights file; null from BASE_GRAPH_BELOW_BYTES up. */
  basePath: string | null;
  built: boolean;
}

/**
 * Returns the paths of the ONNX graphs for a checkpoint, building them once. The key covers the
 * checkpoint's content and the builder version, so a new checkpoint or builder never reuses a stale
 * graph. `head` 'host' (the plain-logits graphs: test oracle, benchmarks) is cached apart. The
 * weights go to one side file (`<graph>.data`, ONNX external data) as the builder streams them, each
 * tensor once for both graphs, so building needs about one tensor's memory and a model of any size
 * fits the format.
 */
export function cachedGraphPath(ckpt: Checkpoint, cacheDir: string, head: HeadMode = 'graph'): GraphPaths {
  const path = join(cacheDir, `${ckpt.arch.graphVersion}${head === 'host' ? '-hosthead' : ''}-${ckpt.hash.slice(0, 16)}.onnx`);
  const basePath = path.replace(/\.onnx$/, '.base.onnx');
  if (existsSync(path)) return { path, basePath: existsSync(basePath) ? basePath : null, built: false };
  const withBase = float32Bytes(ckpt) < BASE_GRAPH_BELOW_BYTES;
  mkdirSync(cacheDir, { recursive: true });
  const dataPath = `${path}.data`;
  const tmp = `.${process.pid}.tmp`;
  const fd = openSync(dataPath + tmp, 'w');
  let full: Uint8Array;
  let base: Uint8Array | null;
  try {
    const external = new ExternalData(fd, basename(dataPath));
    full = buildGraph(ckpt, 'branched', external, head);
    base = withBase ? buildGraph(ckpt, 'base', external, head) : null;
  } finally {
    closeSync(fd);
  }
  writeFileSync(path + tmp, full);
  if (base) writeFileSync(basePath + tmp, base);
  // The full graph's file appears last and atomically: a reader that sees it sees the other two whole.
  renameSync(dataPath + tmp, dataPath);
  if (base) renameSync(basePath + tmp, basePath);
  renameSync(path + tmp, path);
  return { path, basePath: base ? basePath : null, built: true };
}
