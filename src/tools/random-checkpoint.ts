/**
 * Writes a random-weight checkpoint in the Hugging Face layout (config.json, model.safetensors or
 * shards with model.safetensors.index.json, the demo tokenizer): tests use small ones, benchmarks
 * and memory measurements large ones. Tensors are generated and written one at a time, so a
 * checkpoint of any size needs about one tensor's memory.
 *
 *   node dist/src/tools/random-checkpoint.js --preset 100m --out /tmp/llama-100m [--dtype BF16] [--shards 2]
 */
import { closeSync, copyFileSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { architectureOf, parseConfig } from '../model/architectures/index.js';

export type Dtype = 'F32' | 'F16' | 'BF16';

export interface RandomCheckpoint {
  dir: string;
  /** A Hugging Face config.json. */
  config: Record<string, unknown>;
  /** How the tensors are stored. */
  dtype?: Dtype;
  /** Whose grid the values lie on (default: dtype): an F32 file of BF16-exact values equals a BF16 one. */
  precision?: Dtype;
  shards?: number;
  seed?: number;
  tokenizer?: string;
}

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const DEMO_TOKENIZER = join(ROOT, 'models', 'demo-gpt2', 'tokenizer.json');
const BYTES: Record<Dtype, number> = { F32: 4, F16: 2, BF16: 2 };

/** Llama configs: the shapes the issue asks about, on the demo tokenizer's vocabulary where small. */
export const PRESETS: Record<string, Record<string, unknown>> = {
  tiny: llamaConfig({ hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 4096 }),
  '100m': llamaConfig({ hidden_size: 768, intermediate_size: 2816, num_hidden_layers: 12, num_attention_heads: 12, num_key_value_heads: 4, vocab_size: 4096 }),
  // TinyLlama-1.1B's shapes.
  '1b': llamaConfig({ hidden_size: 2048, intermediate_size: 5632, num_hidden_layers: 22, num_attention_heads: 32, num_key_value_heads: 4, vocab_size: 32000, max_position_embeddings: 2048 }),
};

export function llamaConfig(over: Record<string, unknown>): Record<string, unknown> {
  return {
    model_type: 'llama',
    architectures: ['LlamaForCausalLM'],
    hidden_act: 'silu',
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    rope_scaling: null,
    max_position_embeddings: 512,
    tie_word_embeddings: false,
    attention_bias: false,
    mlp_bias: false,
    bos_token_id: 0,
    eos_token_id: 0,
    torch_dtype: 'float32',
    ...over,
  };
}

/** mulberry32: small, fast, seeded. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 → bfloat16 bits, rounding to nearest even. */
function bf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** float32 → IEEE half bits, rounding to nearest even (values here are small and finite). */
function f16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = ((u >>> 23) & 0xff) - 127 + 15;
  let mant = u & 0x7fffff;
  if (exp >= 31) return sign | 0x7c00;
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - exp;
    const half = 1 << (shift - 1);
    const rounded = (mant + half - 1 + ((mant >>> shift) & 1)) >>> shift;
    return sign | rounded;
  }
  const rounded = (mant + 0xfff + ((mant >>> 13) & 1)) >>> 13;
  return (sign | (exp << 10)) + rounded; // a mantissa carry rolls into the exponent, as it should
}

function fromBf16(b: number): number {
  u32[0] = b << 16;
  return f32[0];
}

function fromF16(h: number): number {
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  const v = exp === 0 ? 2 ** -14 * (frac / 1024) : 2 ** (exp - 15) * (1 + frac / 1024);
  return h & 0x8000 ? -v : v;
}

/** Values on `precision`'s grid, encoded as `dtype`. */
function encode(values: Float32Array, dtype: Dtype, precision: Dtype): Uint8Array {
  if (precision === 'BF16') for (let i = 0; i < values.length; i++) values[i] = fromBf16(bf16Bits(values[i]));
  if (precision === 'F16') for (let i = 0; i < values.length; i++) values[i] = fromF16(f16Bits(values[i]));
  if (dtype === 'F32') return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = dtype === 'BF16' ? bf16Bits(values[i]) : f16Bits(values[i]);
  return new Uint8Array(out.buffer);
}

/** Norm weights near 1, everything else uniform with the variance of a 1/sqrt(fan_in) init. */
function values(name: string, shape: number[], next: () => number): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  const norm = name.endsWith('norm.weight');
  const scale = norm ? 0.1 : Math.sqrt(3 / shape[shape.length - 1]);
  for (let i = 0; i < n; i++) out[i] = (norm ? 1 : 0) + (2 * next() - 1) * scale;
  return out;
}

export function writeRandomCheckpoint(o: RandomCheckpoint): void {
  const dtype = o.dtype ?? 'F32';
  const precision = o.precision ?? dtype;
  const shards = o.shards ?? 1;
  const next = rng(o.seed ?? 1);
  const config = parseConfig(o.config);
  const tensors = [...architectureOf(config.modelType).weightShapes(config)].map(([name, shape]) => ({ name, shape, bytes: shape.reduce((a, b) => a * b, 1) * BYTES[dtype] }));
  const total = tensors.reduce((n, t) => n + t.bytes, 0);
  // Consecutive tensors to each shard, about total/shards bytes apiece.
  const groups: (typeof tensors)[] = Array.from({ length: shards }, () => []);
  let acc = 0;
  for (const t of tensors) {
    groups[Math.min(shards - 1, Math.floor((acc * shards) / total))].push(t);
    acc += t.bytes;
  }
  mkdirSync(o.dir, { recursive: true });
  writeFileSync(join(o.dir, 'config.json'), JSON.stringify(o.config, null, 2));
  copyFileSync(o.tokenizer ?? DEMO_TOKENIZER, join(o.dir, 'tokenizer.json'));
  const weightMap: Record<string, string> = {};
  groups.forEach((group, k) => {
    const file = shards === 1 ? 'model.safetensors' : `model-${String(k + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
    let offset = 0;
    for (const t of group) {
      header[t.name] = { dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes] };
      offset += t.bytes;
      weightMap[t.name] = file;
    }
    const json = Buffer.from(JSON.stringify(header));
    const padded = Buffer.alloc(json.length + ((8 - (json.length % 8)) % 8), 0x20);
    json.copy(padded);
    const fd = openSync(join(o.dir, file), 'w');
    try {
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(padded.length));
      writeSync(fd, len);
      writeSync(fd, padded);
      for (const t of group) writeSync(fd, encode(values(t.name, t.shape, next), dtype, precision));
    } finally {
      closeSync(fd);
    }
  });
  if (shards > 1) writeFileSync(join(o.dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values: a } = parseArgs({
    options: { preset: { type: 'string', default: 'tiny' }, out: { type: 'string' }, dtype: { type: 'string', default: 'F32' }, shards: { type: 'string', default: '1' }, seed: { type: 'string', default: '1' } },
  });
  const config = PRESETS[a.preset!];
  if (!config || !a.out || !['F32', 'F16', 'BF16'].includes(a.dtype!)) {
    console.error(`usage: random-checkpoint --out DIR [--preset ${Object.keys(PRESETS).join('|')}] [--dtype F32|F16|BF16] [--shards N] [--seed N]`);
    process.exit(2);
  }
  writeRandomCheckpoint({ dir: a.out, config, dtype: a.dtype as Dtype, shards: Number(a.shards), seed: Number(a.seed) });
  console.log(`wrote ${a.out}`);
}
