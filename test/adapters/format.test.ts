import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import t from 'tap';
import { readAdapterFolder, FsStore } from '../../src/adapters/fs-store.js';
import { adapterParser } from '../../src/adapters/format.js';
import { Registry } from '../../src/adapters/registry.js';
import type { AdapterFiles } from '../../src/adapters/format.js';
import { FormatError } from '../../src/errors.js';
import { loadBaseModel } from '../../src/model/base-model.js';
import { encodeSafetensors } from '../../src/model/safetensors.js';
import { ROOT } from '../helpers.js';

const model = loadBaseModel(join(ROOT, 'models', 'demo-gpt2'), join(ROOT, '.cache'));
const registry = { parse: adapterParser(model) };
const folder = (name: string) => readAdapterFolder(join(ROOT, 'adapters', name));

function promptFiles(cfg: Record<string, unknown>, tensors: Record<string, { shape: number[]; data: Float32Array }>, task?: unknown): AdapterFiles {
  return {
    config: Buffer.from(JSON.stringify({ peft_type: 'PROMPT_TUNING', task_type: 'CAUSAL_LM', num_virtual_tokens: 4, token_dim: 256, ...cfg })),
    weights: Buffer.from(encodeSafetensors(tensors)),
    task: task === undefined ? undefined : Buffer.from(typeof task === 'string' ? task : JSON.stringify(task)),
  };
}
const emb = (rows: number, cols: number, fill = 0.01) => ({ shape: [rows, cols], data: new Float32Array(rows * cols).fill(fill) });

function failure(files: AdapterFiles): string {
  try {
    registry.parse('x', files);
  } catch (e) {
    if (e instanceof FormatError) return e.code;
    throw e;
  }
  return 'ok';
}

t.test('every shipped adapter of a supported kind parses', async (t) => {
  for (const name of ['define-prefix', 'fortune-ptuning', 'kjv-prompt', 'pos-bitfit', 'pos-prefix', 'pos-prompt', 'pos-ptuning']) {
    const a = registry.parse(name, folder(name));
    t.match(a.version, /^[0-9a-f]{16}$/, name);
  }
  t.equal(registry.parse('pos-bitfit', folder('pos-bitfit')).spec.labels.length, 4);
});

t.test('a well-formed generated adapter parses, with defaults for task.json', async (t) => {
  const a = registry.parse('x', promptFiles({}, { prompt_embeddings: emb(4, 256) }));
  t.equal(a.tensors.kind, 'prompt');
  t.equal(a.spec.kind, 'generation');
  t.equal(a.spec.promptTemplate, '{text}');
});

t.test('each validation failure names its check', async (t) => {
  const good = { prompt_embeddings: emb(4, 256) };
  t.equal(failure(promptFiles({}, { prompt_embeddings: emb(4, 256), extra: emb(1, 1) })), 'unexpected_tensors', 'unexpected tensor');
  t.equal(failure(promptFiles({}, { other: emb(4, 256) })), 'unexpected_tensors', 'required tensor missing');
  t.equal(failure(promptFiles({}, { prompt_embeddings: emb(4, 128) })), 'wrong_shape', 'hidden size');
  t.equal(failure(promptFiles({ num_virtual_tokens: 5 }, good)), 'wrong_shape', 'num_virtual_tokens');
  t.equal(failure(promptFiles({ token_dim: 512 }, good)), 'wrong_base_model', 'token_dim');
  t.equal(failure(promptFiles({ peft_type: 'PREFIX_TUNING', num_layers: 6 }, { prompt_embeddings: emb(4, 6 * 2 * 256) })), 'wrong_base_model', 'layers');
  t.equal(failure(promptFiles({ peft_type: 'PREFIX_TUNING' }, { prompt_embeddings: emb(4, 256) })), 'wrong_shape', 'prefix width');
  t.equal(failure(promptFiles({ num_attention_heads: 8 }, good)), 'wrong_base_model', 'heads');
  const nan = emb(4, 256);
  nan.data[17] = NaN;
  t.equal(failure(promptFiles({}, { prompt_embeddings: nan })), 'non_finite', 'NaN');
  const inf = emb(4, 256);
  inf.data[3] = Infinity;
  t.equal(failure(promptFiles({}, { prompt_embeddings: inf })), 'non_finite', 'Infinity');
  const huge = emb(4, 256);
  huge.data[5] = -2e4;
  t.equal(failure(promptFiles({}, { prompt_embeddings: huge })), 'value_too_large', 'finite, but beyond ±1e4: the forward pass would overflow');
  t.equal(failure(promptFiles({ peft_type: 'LOHA' }, good)), 'unsupported_peft_type', 'LoHa');
  t.equal(failure(promptFiles({ peft_type: 'NOPE' }, good)), 'unsupported_peft_type', 'unknown type');
  t.equal(failure(promptFiles({ task_type: 'SEQ_CLS' }, good)), 'unsupported_task_type', 'task_type');
  t.equal(failure({ ...promptFiles({}, good), config: Buffer.from('{"peft_type": ') }), 'invalid_json', 'config JSON');
  t.equal(failure({ ...promptFiles({}, good), weights: Buffer.from(encodeSafetensors(good)).subarray(0, 100) }), 'safetensors_header_out_of_bounds', 'truncated weights');
  t.equal(failure(promptFiles({}, good, { prompt_template: 'no placeholder' })), 'invalid_template', 'template without {text}');
  t.equal(failure(promptFiles({}, good, { prompt_template: '{text} {text}' })), 'invalid_template', 'template with {text} twice');
  t.equal(failure(promptFiles({}, good, { kind: 'classification', labels: ['only'] })), 'invalid_labels', 'one label');
  t.equal(failure(promptFiles({}, good, { kind: 'classification', labels: ['a', 'a'] })), 'invalid_labels', 'duplicate labels');
  t.equal(failure(promptFiles({}, good, { kind: 'classification', labels: Array.from({ length: 65 }, (_, i) => `l${i}`) })), 'invalid_labels', '65 labels');
  t.equal(failure(promptFiles({}, good, '{bad json')), 'invalid_json', 'task.json JSON');
});

t.test('config fields are checked by type and as own properties', async (t) => {
  const good = { prompt_embeddings: emb(4, 256) };
  for (const p of ['toString', 'valueOf', 'constructor', '__proto__', 'hasOwnProperty', '__defineGetter__']) {
    t.equal(failure(promptFiles({ peft_type: p }, good)), 'unsupported_peft_type', `peft_type ${p}`);
  }
  t.equal(failure(promptFiles({ peft_type: ['PROMPT_TUNING'] }, good)), 'invalid_config', 'peft_type as an array');
  t.equal(failure(promptFiles({ peft_type: { toString: 'PROMPT_TUNING' } }, good)), 'invalid_config', 'peft_type as an object');
  t.equal(failure(promptFiles({ peft_type: null }, good)), 'invalid_config', 'peft_type null');
  t.equal(failure(promptFiles({ num_virtual_tokens: '4' }, good)), 'invalid_config', 'num_virtual_tokens as a string');
  t.equal(failure(promptFiles({ num_virtual_tokens: 4.5 }, good)), 'invalid_config', 'num_virtual_tokens fractional');
  t.equal(failure(promptFiles({ num_virtual_tokens: null }, good)), 'invalid_config', 'num_virtual_tokens null');
  t.equal(failure(promptFiles({ token_dim: '256' }, good)), 'invalid_config', 'token_dim as a string');
  t.equal(failure(promptFiles({ task_type: ['CAUSAL_LM'] }, good)), 'invalid_config', 'task_type as an array');
  t.equal(failure(promptFiles({ token_dim: null, num_layers: null }, good)), 'ok', 'null sizes mean absent, as PEFT writes them');
  const proto = { ...promptFiles({}, good), config: Buffer.from('{"__proto__": {"peft_type": "PROMPT_TUNING"}, "num_virtual_tokens": 4}') };
  t.equal(failure(proto), 'invalid_config', 'peft_type only on a __proto__ key');
});

t.test('task.json meets the limits of a request, and leaves room for an input', async (t) => {
  const { ClassifyBody } = await import('../../src/http/schemas.js');
  const { MAX_LABEL_CHARS, MAX_LABELS, MAX_TEMPLATE_CHARS, MIN_LABELS } = await import('../../src/adapters/task-spec.js');
  const body = ClassifyBody.properties;
  t.equal(body.prompt_template.maxLength, MAX_TEMPLATE_CHARS, 'the request schema uses the same template limit');
  t.equal(body.labels.items.maxLength, MAX_LABEL_CHARS);
  t.equal(body.labels.maxItems, MAX_LABELS);
  t.equal(body.labels.minItems, MIN_LABELS);
  const good = { prompt_embeddings: emb(4, 256) };
  const parse = adapterParser(model);
  const refused = (task: unknown) => {
    try {
      parse('x', promptFiles({}, good, task));
      return 'ok';
    } catch (e) {
      return (e as FormatError).code;
    }
  };
  t.equal(refused({ prompt_template: 'x'.repeat(MAX_TEMPLATE_CHARS + 1) + '{text}' }), 'invalid_template', 'template over the limit');
  t.equal(refused({ prompt_template: 42 }), 'invalid_template', 'template not a string');
  t.equal(refused({ kind: 'classification', labels: ['a', 'b'.repeat(MAX_LABEL_CHARS + 1)] }), 'invalid_labels', 'label over the limit');
  t.equal(refused({ kind: 'classification', labels: ['a', 7] }), 'invalid_labels', 'label not a string');
  t.equal(refused({ kind: 'toString' }), 'invalid_task', 'kind toString');
  t.equal(refused([]), 'invalid_json', 'an array');
  t.equal(refused({ task: 'pos', kind: 'classification', labels: ['a', 'b'] }), 'ok', 'other fields pass through');
  // 'the ' is one token: 600 of them leave no room in the 512-token context.
  t.equal(refused({ prompt_template: 'the '.repeat(600) + '{text}' }), 'unservable_task', 'a template that fills the context');
  t.equal(refused({ prompt_template: 'the '.repeat(400) + '{text}' }), 'ok', 'a long template that still leaves room');
});

t.test('BitFit validation: names must be biases of the base model, with their length', async (t) => {
  const cfg = Buffer.from(JSON.stringify({ peft_type: 'BITFIT', task_type: 'CAUSAL_LM', bias_values: 'absolute' }));
  const bit = (tensors: Record<string, { shape: number[]; data: Float32Array }>) => failure({ config: cfg, weights: Buffer.from(encodeSafetensors(tensors)) });
  t.equal(bit({ 'transformer.h.0.ln_1.bias': { shape: [256], data: new Float32Array(256) } }), 'ok');
  t.equal(bit({ 'transformer.h.0.attn.c_attn.weight': { shape: [256], data: new Float32Array(256) } }), 'unexpected_tensors', 'a weight, not a bias');
  t.equal(bit({ 'transformer.h.9.ln_1.bias': { shape: [256], data: new Float32Array(256) } }), 'unexpected_tensors', 'a layer the model lacks');
  t.equal(bit({ 'transformer.h.0.mlp.c_fc.bias': { shape: [256], data: new Float32Array(256) } }), 'wrong_shape', 'wrong length');
  t.equal(failure({ config: Buffer.from(JSON.stringify({ peft_type: 'BITFIT', bias_values: 'delta' })), weights: Buffer.from(encodeSafetensors({ 'transformer.ln_f.bias': { shape: [256], data: new Float32Array(256) } })) }), 'invalid_config', 'delta values');
});

t.test('startup loading skips a bad adapter with its reason and keeps the rest', async (t) => {
  const { mkdtempSync, mkdirSync, writeFileSync, cpSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'adapters-'));
  cpSync(join(ROOT, 'adapters', 'pos-bitfit'), join(dir, 'pos-bitfit'), { recursive: true });
  mkdirSync(join(dir, 'broken'));
  writeFileSync(join(dir, 'broken', 'adapter_config.json'), readFileSync(join(ROOT, 'adapters', 'kjv-prompt', 'adapter_config.json')));
  writeFileSync(join(dir, 'broken', 'adapter_model.safetensors'), Buffer.from('garbage'));
  mkdirSync(join(dir, 'missing'));
  const fresh = new Registry(model, new FsStore(dir), pino({ level: 'silent' }));
  const { loaded, skipped } = await fresh.sync(true);
  t.same(loaded, ['pos-bitfit']);
  t.same(skipped.map((s) => s.task).sort(), ['broken', 'missing']);
  t.match(skipped.find((s) => s.task === 'missing')!.reason, /missing_file/);
});
