import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FormatError } from '../errors.js';
import { parseSafetensors, type TensorMap } from './safetensors.js';

/** The architecture facts the server needs from a Hugging Face GPT-2 `config.json`. */
export interface ModelConfig {
  modelType: 'gpt2';
  vocabSize: number;
  nPositions: number;
  hidden: number;
  layers: number;
  heads: number;
  headDim: number;
  inner: number;
  layerNormEps: number;
  eosTokenId: number;
}

export interface Checkpoint {
  config: ModelConfig;
  weights: TensorMap;
  /** Content hash of config and weights: keys the graph cache and identifies the base model. */
  hash: string;
}

export function parseConfig(raw: Record<string, unknown>): ModelConfig {
  if (raw.model_type !== 'gpt2') {
    throw new FormatError('unsupported_architecture', `unsupported architecture: model_type '${String(raw.model_type)}' (supported: gpt2)`);
  }
  const act = raw.activation_function ?? 'gelu_new';
  if (act !== 'gelu_new') throw new FormatError('unsupported_architecture', `unsupported activation_function '${String(act)}' (supported: gelu_new)`);
  if (raw.scale_attn_by_inverse_layer_idx || raw.reorder_and_upcast_attn) {
    throw new FormatError('unsupported_architecture', 'scale_attn_by_inverse_layer_idx and reorder_and_upcast_attn are not supported');
  }
  const hidden = Number(raw.n_embd);
  const heads = Number(raw.n_head);
  if (!(hidden > 0 && heads > 0 && hidden % heads === 0)) throw new FormatError('invalid_config', 'n_embd must be a positive multiple of n_head');
  return {
    modelType: 'gpt2',
    vocabSize: Number(raw.vocab_size),
    nPositions: Number(raw.n_positions),
    hidden,
    layers: Number(raw.n_layer),
    heads,
    headDim: hidden / heads,
    inner: raw.n_inner ? Number(raw.n_inner) : 4 * hidden,
    layerNormEps: Number(raw.layer_norm_epsilon ?? 1e-5),
    eosTokenId: Number(raw.eos_token_id ?? 0),
  };
}

/** The bias vectors of the model, in HF names: BitFit replaces exactly these, per row. */
export function biasNames(c: ModelConfig): { name: string; size: number }[] {
  const out: { name: string; size: number }[] = [];
  for (let l = 0; l < c.layers; l++) {
    const p = `transformer.h.${l}`;
    out.push(
      { name: `${p}.ln_1.bias`, size: c.hidden },
      { name: `${p}.attn.c_attn.bias`, size: 3 * c.hidden },
      { name: `${p}.attn.c_proj.bias`, size: c.hidden },
      { name: `${p}.ln_2.bias`, size: c.hidden },
      { name: `${p}.mlp.c_fc.bias`, size: c.inner },
      { name: `${p}.mlp.c_proj.bias`, size: c.hidden },
    );
  }
  out.push({ name: 'transformer.ln_f.bias', size: c.hidden });
  return out;
}

export function loadCheckpoint(dir: string): Checkpoint {
  const configBytes = readFileSync(join(dir, 'config.json'));
  const config = parseConfig(JSON.parse(configBytes.toString('utf8')));
  const weightBytes = readFileSync(join(dir, 'model.safetensors'));
  const { tensors } = parseSafetensors(weightBytes);
  // Some exports prefix names with `transformer.`, others do not; normalise to the prefixed form.
  const weights: TensorMap = new Map();
  for (const [name, t] of tensors) weights.set(name.startsWith('transformer.') || name.startsWith('lm_head') ? name : `transformer.${name}`, t);
  checkWeights(config, weights);
  const hash = createHash('sha256').update(configBytes).update(weightBytes).digest('hex');
  return { config, weights, hash };
}

function checkWeights(c: ModelConfig, w: TensorMap): void {
  const expect = (name: string, shape: number[]) => {
    const t = w.get(name);
    if (!t) throw new FormatError('missing_weight', `checkpoint has no tensor '${name}'`);
    if (t.shape.join() !== shape.join()) throw new FormatError('weight_shape', `'${name}' has shape [${t.shape}], expected [${shape}]`);
  };
  expect('transformer.wte.weight', [c.vocabSize, c.hidden]);
  expect('transformer.wpe.weight', [c.nPositions, c.hidden]);
  expect('transformer.ln_f.weight', [c.hidden]);
  for (let l = 0; l < c.layers; l++) {
    const p = `transformer.h.${l}`;
    expect(`${p}.ln_1.weight`, [c.hidden]);
    expect(`${p}.attn.c_attn.weight`, [c.hidden, 3 * c.hidden]);
    expect(`${p}.attn.c_proj.weight`, [c.hidden, c.hidden]);
    expect(`${p}.ln_2.weight`, [c.hidden]);
    expect(`${p}.mlp.c_fc.weight`, [c.hidden, c.inner]);
    expect(`${p}.mlp.c_proj.weight`, [c.inner, c.hidden]);
  }
  for (const { name, size } of biasNames(c)) expect(name, [size]);
}
