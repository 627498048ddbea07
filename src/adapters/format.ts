import { createHash } from 'node:crypto';
import { Type } from '@sinclair/typebox';
import { FormatError } from '../errors.js';
import { biasNames, type ModelConfig } from '../model/checkpoint.js';
import { parseSafetensors, type Tensor } from '../model/safetensors.js';
import { tensorBytes, type AdapterTensors } from '../protocol.js';
import { MAX_ADAPTER_VALUE, parseIa3, parseLora } from './lora.js';
import { firstSchemaError } from './schema-check.js';
import { checkServable, parseTaskSpec, type TaskSpec } from './task-spec.js';

export type PeftType = 'PROMPT_TUNING' | 'P_TUNING' | 'PREFIX_TUNING' | 'BITFIT' | 'LORA' | 'IA3';
const KIND: Record<PeftType, AdapterTensors['kind']> = {
  PROMPT_TUNING: 'prompt',
  P_TUNING: 'prompt',
  PREFIX_TUNING: 'prefix',
  BITFIT: 'bitfit',
  LORA: 'lora',
  IA3: 'ia3',
};
/** Own-property lookup: `toString`, `__proto__` or `constructor` are not PEFT types. */
const kindOf = (peftType: string): AdapterTensors['kind'] | undefined => (Object.hasOwn(KIND, peftType) ? KIND[peftType as PeftType] : undefined);
const KNOWN_UNSUPPORTED = new Set(['ADALORA', 'LOHA', 'LOKR', 'OFT', 'BOFT', 'VERA', 'MULTITASK_PROMPT_TUNING', 'ADAPTION_PROMPT']);

/** The three files of an adapter folder, as bytes. */
export interface AdapterFiles {
  config: Buffer;
  weights: Buffer;
  task?: Buffer;
}

export interface Adapter {
  task: string;
  /** Content hash of the three files: the adapter's version. */
  version: string;
  peftType: PeftType;
  spec: TaskSpec;
  tensors: AdapterTensors;
  /** Size of the files as uploaded. */
  bytes: number;
  /** Bytes the decoded tensors hold in memory. */
  residentBytes: number;
  createdAt: string;
}

/** PEFT writes null for unset sizes; absent and null mean the same. */
const OptionalSize = Type.Optional(Type.Union([Type.Integer({ minimum: 0 }), Type.Null()]));
/** The adapter_config.json fields this server reads, by type; the many others PEFT writes pass through. */
const AdapterConfig = Type.Object({
  peft_type: Type.String({ minLength: 1, maxLength: 64 }),
  task_type: Type.Optional(Type.Union([Type.String({ maxLength: 64 }), Type.Null()])),
  num_virtual_tokens: OptionalSize,
  num_transformer_submodules: OptionalSize,
  token_dim: OptionalSize,
  num_layers: OptionalSize,
  num_attention_heads: OptionalSize,
  bias_values: Type.Optional(Type.String({ maxLength: 64 })),
});

const fail = (code: string, message: string): never => {
  throw new FormatError(code, message);
};

/** A parser bound to one base model, for tools and tests that need no registry. */
export function adapterParser(model: { config: ModelConfig; tensors: { biases: Record<string, Float32Array> }; tokenizer?: { encodeSync(text: string): ArrayLike<number> } }) {
  const encode = model.tokenizer && ((text: string) => model.tokenizer!.encodeSync(text));
  return (task: string, files: AdapterFiles) => parseAdapter(task, files, { config: model.config, biases: model.tensors.biases, encode });
}

export function adapterVersion(files: AdapterFiles): string {
  const h = createHash('sha256');
  for (const part of [files.config, files.weights, files.task ?? Buffer.alloc(0)]) {
    h.update(String(part.length)).update(':').update(part);
  }
  return h.digest('hex').slice(0, 16);
}

/**
 * Parses and validates an adapter against the loaded base model. Nothing of it is used before every
 * check has passed; a failure is a FormatError whose code names the check.
 */
export interface ParseBase {
  config: ModelConfig;
  biases: Record<string, Float32Array>;
  /** The base model's tokenizer: with it, a task.json that leaves no room for an input is refused. */
  encode?: (text: string) => ArrayLike<number>;
}

export function parseAdapter(task: string, files: AdapterFiles, base: ParseBase, createdAt = new Date().toISOString()): Adapter {
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(files.config.toString('utf8'));
  } catch (e) {
    return fail('invalid_json', `adapter_config.json is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof cfg !== 'object' || cfg === null || Array.isArray(cfg)) return fail('invalid_json', 'adapter_config.json must be an object');
  const problem = firstSchemaError(AdapterConfig, cfg);
  if (problem) return fail('invalid_config', `adapter_config.json ${problem.message}`);
  const peftType = cfg.peft_type as string;
  if (kindOf(peftType) === undefined) {
    return fail('unsupported_peft_type', KNOWN_UNSUPPORTED.has(peftType)
      ? `peft_type ${peftType} is not supported yet (supported: ${Object.keys(KIND).join(', ')})`
      : `unknown peft_type ${JSON.stringify(cfg.peft_type)}`);
  }
  if ((cfg.task_type ?? 'CAUSAL_LM') !== 'CAUSAL_LM') return fail('unsupported_task_type', `task_type ${JSON.stringify(cfg.task_type)} is not supported (CAUSAL_LM)`);
  const spec = parseTaskSpec(files.task);
  const { tensors: raw } = parseSafetensors(files.weights);
  for (const [name, t] of raw) {
    for (let i = 0; i < t.data.length; i++) {
      const v = t.data[i];
      if (Math.abs(v) <= MAX_ADAPTER_VALUE) continue;
      if (!Number.isFinite(v)) fail('non_finite', `tensor '${name}' has a non-finite value at flat index ${i}`);
      fail('value_too_large', `tensor '${name}' has ${v} at flat index ${i}; adapter values are limited to ±${MAX_ADAPTER_VALUE}, far beyond trained ones (values near float32's limit overflow the forward pass)`);
    }
  }
  const type = peftType as PeftType;
  const tensors =
    type === 'BITFIT' ? bitfit(cfg, raw, base) : type === 'LORA' ? parseLora(cfg, raw, base.config) : type === 'IA3' ? parseIa3(cfg, raw, base.config) : virtual(type, cfg, raw, base.config);
  if (base.encode) checkServable(spec, tensors.virtualTokens, base.config.nPositions, base.encode);
  const residentBytes = tensorBytes(tensors);
  const version = adapterVersion(files);
  tensors.key = `${task}@${version}`;
  return { task, version, peftType: type, spec, tensors, bytes: files.config.length + files.weights.length + (files.task?.length ?? 0), residentBytes, createdAt };
}

function shared(data: Float32Array): Float32Array {
  const out = new Float32Array(new SharedArrayBuffer(data.byteLength));
  out.set(data);
  return out;
}

function virtual(type: PeftType, cfg: Record<string, unknown>, raw: Map<string, Tensor>, c: ModelConfig): AdapterTensors {
  const names = [...raw.keys()];
  if (names.length !== 1 || names[0] !== 'prompt_embeddings') {
    fail('unexpected_tensors', `${type} needs exactly one tensor 'prompt_embeddings', found [${names.join(', ')}]`);
  }
  const t = raw.get('prompt_embeddings')!;
  const n = cfg.num_virtual_tokens as number | null | undefined;
  if (typeof n !== 'number' || n < 1) return fail('invalid_config', 'num_virtual_tokens must be a positive integer');
  if ((cfg.num_transformer_submodules ?? 1) !== 1) fail('invalid_config', 'num_transformer_submodules must be 1 for a decoder-only model');
  // PEFT sizes a prefix by the key/value heads (grouped-query models): token_dim = kv_heads·head_dim.
  const prefix = type === 'PREFIX_TUNING';
  const tokenDim = prefix ? c.kvHeads * c.headDim : c.hidden;
  const heads = prefix ? c.kvHeads : c.heads;
  if (cfg.token_dim != null && cfg.token_dim !== tokenDim) fail('wrong_base_model', `token_dim ${cfg.token_dim} differs from the base model's ${prefix ? 'key/value width' : 'hidden size'} ${tokenDim}`);
  if (cfg.num_layers != null && cfg.num_layers !== c.layers) fail('wrong_base_model', `num_layers ${cfg.num_layers} differs from the base model's ${c.layers}`);
  if (cfg.num_attention_heads != null && cfg.num_attention_heads !== heads) fail('wrong_base_model', `num_attention_heads ${cfg.num_attention_heads} differs from the base model's ${heads}${prefix ? ' key/value heads' : ''}`);
  const width = prefix ? c.layers * 2 * tokenDim : c.hidden;
  if (t.shape.length !== 2 || t.shape[0] !== n || t.shape[1] !== width) {
    fail('wrong_shape', `prompt_embeddings has shape [${t.shape}], expected [${n}, ${width}] (num_virtual_tokens × ${prefix ? 'layers·2·kv_heads·head_dim' : 'hidden'})`);
  }
  if (n >= c.nPositions) fail('wrong_shape', `num_virtual_tokens ${n} leaves no room in the ${c.nPositions}-token context`);
  return { key: '', kind: kindOf(type)!, virtualTokens: n, embeddings: shared(t.data) };
}

function bitfit(cfg: Record<string, unknown>, raw: Map<string, Tensor>, base: ParseBase): AdapterTensors {
  if ((cfg.bias_values ?? 'absolute') !== 'absolute') fail('invalid_config', `bias_values ${JSON.stringify(cfg.bias_values)} is not supported (absolute)`);
  const sizes = new Map(biasNames(base.config).map((b) => [b.name, b.size]));
  if (sizes.size === 0) fail('no_bias_parameters', `the base model (${base.config.modelType}) has no bias parameters, so a BitFit adapter has nothing to replace`);
  if (raw.size === 0) fail('unexpected_tensors', 'a BitFit adapter needs at least one bias tensor');
  const biases: Record<string, Float32Array> = {};
  for (const [name, t] of raw) {
    const size = sizes.get(name);
    if (size === undefined) fail('unexpected_tensors', `'${name}' is not a bias of the base model`);
    if (t.shape.length !== 1 || t.shape[0] !== size) fail('wrong_shape', `'${name}' has shape [${t.shape}], expected [${size}]`);
  }
  // Every bias is materialised per adapter, base values where the adapter names none, so a
  // BitFit row costs the worker one copy per bias and no lookup of what is overridden.
  for (const name of sizes.keys()) biases[name] = shared(raw.get(name)?.data ?? base.biases[name]);
  return { key: '', kind: 'bitfit', virtualTokens: 0, biases };
}
