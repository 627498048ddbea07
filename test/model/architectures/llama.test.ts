import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { inverseFrequencies } from '../../../src/model/architectures/llama.js';
import { parseConfig } from '../../../src/model/checkpoint.js';
import type { LlamaConfig } from '../../../src/model/architectures/architecture.js';
import { FIXTURES } from '../../helpers.js';

const read = (name: string) => JSON.parse(readFileSync(join(FIXTURES, 'llama', name, 'config.json'), 'utf8'));
const tinyLlama = read('tiny-llama');
const tinyQwen2 = read('tiny-qwen2');
const llama = (over: Record<string, unknown>) => parseConfig({ ...tinyLlama, ...over }) as LlamaConfig;

t.test('config fields of the two test checkpoints', async (t) => {
  t.match(parseConfig(tinyLlama), { modelType: 'llama', hidden: 128, heads: 4, kvHeads: 2, headDim: 32, layers: 3, inner: 344, nPositions: 512, tieWordEmbeddings: false, attentionBias: false, ropeScaling: null });
  t.match(parseConfig(tinyQwen2), { modelType: 'qwen2', heads: 4, kvHeads: 1, headDim: 32, ropeTheta: 1e6, rmsNormEps: 1e-6, tieWordEmbeddings: true, attentionBias: true, outputBias: false });
  t.equal(llama({ head_dim: undefined }).headDim, 32, 'head_dim defaults to hidden / heads');
  t.equal(llama({ num_key_value_heads: undefined }).kvHeads, 4, 'no GQA without num_key_value_heads');
  t.equal(llama({ eos_token_id: [7, 9] }).eosTokenId, 7, 'a list of end-of-sequence ids');
  t.match(llama({ attention_bias: true, mlp_bias: true }), { attentionBias: true, outputBias: true, mlpBias: true });
});

t.test('rope_scaling: null, linear and llama3 are served; any other type is refused by name', async (t) => {
  t.match(llama({ rope_scaling: { type: 'linear', factor: 4 } }).ropeScaling, { type: 'linear', factor: 4 });
  const l3 = { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
  t.match(llama({ rope_scaling: l3 }).ropeScaling, { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 });
  t.equal(llama({ rope_scaling: { rope_type: 'default' } }).ropeScaling, null);
  for (const type of ['dynamic', 'yarn', 'longrope']) {
    t.throws(() => llama({ rope_scaling: { type, factor: 2 } }), { code: 'unsupported_architecture', message: `unsupported rope_scaling type '${type}' (supported: linear, llama3)` });
  }
  t.throws(() => llama({ rope_scaling: { type: 'linear' } }), { code: 'invalid_config', message: /factor/ });
});

t.test('inverse frequencies: linear divides all, llama3 keeps high, divides low and blends the middle', async (t) => {
  const base = llama({ head_dim: 128, hidden_size: 512, rope_theta: 500000 });
  const plain = inverseFrequencies(base);
  t.equal(plain[0], 1);
  t.ok(Math.abs(plain[1] - 1 / 500000 ** (2 / 128)) < 1e-15);
  const linear = inverseFrequencies({ ...base, ropeScaling: { type: 'linear', factor: 4 } });
  plain.forEach((f, i) => t.ok(Math.abs(linear[i] - f / 4) < 1e-18, `linear ${i}`));
  const l3 = inverseFrequencies({ ...base, ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 } });
  const wavelen = (f: number) => (2 * Math.PI) / f;
  let high = 0;
  let low = 0;
  let mid = 0;
  plain.forEach((f, i) => {
    if (wavelen(f) < 8192 / 4) {
      t.equal(l3[i], f);
      high++;
    } else if (wavelen(f) > 8192) {
      t.ok(Math.abs(l3[i] - f / 8) < 1e-18);
      low++;
    } else {
      t.ok(l3[i] < f && l3[i] > f / 8, `blended ${i}`);
      mid++;
    }
  });
  t.ok(high > 0 && low > 0 && mid > 0, `${high} high, ${mid} middle, ${low} low frequencies`);
});

t.test('hidden_act other than silu is refused by name', async (t) => {
  t.throws(() => llama({ hidden_act: 'gelu' }), { code: 'unsupported_architecture', message: "unsupported hidden_act 'gelu' (supported: silu)" });
});

t.test('sliding windows: served up to the window, where it equals full attention', async (t) => {
  t.equal(parseConfig({ ...tinyLlama, model_type: 'mistral', sliding_window: 256 }).nPositions, 256);
  t.equal(parseConfig({ ...tinyLlama, model_type: 'mistral', sliding_window: 4096 }).nPositions, 512);
  t.equal(parseConfig({ ...tinyLlama, model_type: 'mistral', sliding_window: null }).nPositions, 512);
  t.equal(parseConfig({ ...tinyLlama, model_type: 'mistral', max_position_embeddings: 32768 }).nPositions, 4096, "HF's default window");
  t.equal(parseConfig({ ...tinyQwen2, sliding_window: 128 }).nPositions, 512, 'qwen2 ignores it without use_sliding_window');
  t.equal(parseConfig({ ...tinyQwen2, sliding_window: 128, use_sliding_window: true }).nPositions, 128);
});

t.test('inconsistent shapes are refused', async (t) => {
  t.throws(() => llama({ num_key_value_heads: 3 }), { code: 'invalid_config', message: /not a multiple/ });
  t.throws(() => llama({ hidden_size: 0 }), { code: 'invalid_config' });
  t.throws(() => llama({ head_dim: 33 }), { code: 'invalid_config', message: /even/ });
});
