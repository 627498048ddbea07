import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { basename, join } from 'node:path';
import { FormatError } from '../errors.js';
import type { Architecture, BiasVector, ModelConfig, WeightSource } from './architectures/architecture.js';
import { architectureOf, parseConfig } from './architectures/index.js';
import { SafetensorsFile } from './safetensors.js';

export type { ModelConfig } from './architectures/architecture.js';
export { parseConfig } from './architectures/index.js';

/**
 * A checkpoint opened by its headers only: tensors are read from disk when the graph builder or
 * the host asks for them, so loading never holds the whole model in memory.
 */
export interface Checkpoint {
  config: ModelConfig;
  arch: Architecture;
  weights: WeightSource;
  /** Content hash of config and weights: keys the graph cache and identifies the base model. */
  hash: string;
}

/** The bias vectors of the model, in HF names: BitFit replaces exactly these, per row. */
export function biasNames(c: ModelConfig): BiasVector[] {
  return architectureOf(c.modelType).biases(c);
}

export function loadCheckpoint(dir: string): Checkpoint {
  const configBytes = readFileSync(join(dir, 'config.json'));
  const config = parseConfig(JSON.parse(configBytes.toString('utf8')));
  const arch = architectureOf(config.modelType);
  const files = shardFiles(dir).map((f) => new SafetensorsFile(join(dir, f)));
  const where = new Map<string, { file: SafetensorsFile; name: string }>();
  for (const file of files) {
    for (const name of file.tensors.keys()) {
      const canonical = arch.canonicalName(name);
      if (where.has(canonical)) throw new FormatError('duplicate_weight', `tensor '${name}' appears twice in the checkpoint`);
      where.set(canonical, { file, name });
    }
  }
  const weights: WeightSource = {
    shape: (name) => {
      const at = where.get(name);
      return at && at.file.tensors.get(at.name)!.shape;
    },
    read: (name) => {
      const at = where.get(name);
      if (!at) throw new FormatError('missing_weight', `checkpoint has no tensor '${name}'`);
      return at.file.read(at.name);
    },
  };
  for (const [name, shape] of arch.weightShapes(config)) {
    const actual = weights.shape(name);
    if (!actual) throw new FormatError('missing_weight', `checkpoint has no tensor '${name}'`);
    if (actual.join() !== shape.join()) throw new FormatError('weight_shape', `'${name}' has shape [${actual}], expected [${shape}]`);
  }
  return { config, arch, weights, hash: contentHash(configBytes, files.map((f) => f.path)) };
}

/** `model.safetensors`, or the shards that `model.safetensors.index.json` names, in order. */
function shardFiles(dir: string): string[] {
  const index = join(dir, 'model.safetensors.index.json');
  if (!existsSync(index)) return ['model.safetensors'];
  const map = (JSON.parse(readFileSync(index, 'utf8')) as { weight_map?: Record<string, unknown> }).weight_map;
  if (typeof map !== 'object' || map === null) throw new FormatError('invalid_index', 'model.safetensors.index.json has no weight_map');
  const files = [...new Set(Object.values(map))].sort();
  for (const f of files) {
    // The index names files in the model folder: nothing else may be read through it.
    if (typeof f !== 'string' || basename(f) !== f || !f.endsWith('.safetensors')) throw new FormatError('invalid_index', `weight_map names ${JSON.stringify(f)}, not a .safetensors file in the model folder`);
  }
  return files as string[];
}

/** sha256 of the config and every weight file, read in 16 MiB chunks (never the whole file at once). */
function contentHash(config: Buffer, paths: string[]): string {
  const h = createHash('sha256').update(config);
  const chunk = Buffer.alloc(16 << 20);
  for (const path of paths) {
    const fd = openSync(path, 'r');
    try {
      for (let n; (n = readSync(fd, chunk, 0, chunk.length, null)) > 0; ) h.update(chunk.subarray(0, n));
    } finally {
      closeSync(fd);
    }
  }
  return h.digest('hex');
}
