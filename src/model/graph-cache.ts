import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Checkpoint } from './checkpoint.js';
import { buildGpt2Graph, GRAPH_VERSION } from './gpt2-graph.js';

/**
 * Returns the path of the ONNX graph for a checkpoint, building it once. The key covers the
 * checkpoint's content and the builder version, so a new checkpoint or builder never reuses a stale graph.
 */
export function cachedGraphPath(ckpt: Checkpoint, cacheDir: string): { path: string; built: boolean } {
  const path = join(cacheDir, `${GRAPH_VERSION}-${ckpt.hash.slice(0, 16)}.onnx`);
  if (existsSync(path)) return { path, built: false };
  mkdirSync(cacheDir, { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, buildGpt2Graph(ckpt));
  renameSync(tmp, path); // atomic: a concurrent reader sees no file or a whole one
  return { path, built: true };
}
