import { FormatError } from '../errors.js';
import { linearModules, type LinearModule, type LinearShape } from '../model/adapter-ops.js';
import { checkPatternBudget, configRegex } from './config-regex.js';
import type { Tensor } from '../model/safetensors.js';
import type { AdapterTensors } from '../protocol.js';

/**
 * The largest magnitude an adapter value may have: a sanity bound, far beyond trained adapters (the
 * demo's and the test fixtures' largest is 11.3). Values near float32's limit (an upload had biases
 * of 1e38) pass the finiteness check but overflow the forward pass into NaN logits. It does not
 * prove that every adapter within it stays finite (LoRA's update is scale · B·A, summed over the
 * rank), only that such a row's NaN is its own: the KV batch never lets it reach another row.
 */
export const MAX_ADAPTER_VALUE = 1e4;

/** Its targeted modules laid out at an adapter's largest rank may hold this many times its own floats, or this many floats (64 MiB), whichever is more. */
const MAX_PADDING_RATIO = 4;
const MAX_PADDED_FLOATS = 16 * 2 ** 20;

/**
 * PEFT's LORA and IA3 formats, checked against the linear modules of the loaded base model
 * (src/model/adapter-ops.ts). Tensor names are PEFT's: `base_model.model.<module>.lora_A.weight`
 * [r, in], `…lora_B.weight` [out, r], `…ia3_l` ([out, 1], or [1, in] for a feedforward module).
 * `fan_in_fan_out` only tells PEFT how to merge into GPT-2's Conv1D weights; the factors are saved in
 * the same layout either way, and nothing is merged here.
 */
const fail = (code: string, message: string): never => {
  throw new FormatError(code, message);
};

/** Options this server does not implement: a set value is refused with a message naming the field. */
const REFUSED: Record<string, string> = {
  use_dora: 'DoRA (use_dora) is not supported',
  modules_to_save: 'modules_to_save (fully trained copies of base modules) is not supported',
  lora_bias: 'lora_bias (a trained bias on lora_B) is not supported',
  use_qalora: 'use_qalora is not supported',
  layer_replication: 'layer_replication is not supported',
  trainable_token_indices: 'trainable_token_indices is not supported',
  target_parameters: 'target_parameters is not supported',
  alora_invocation_tokens: 'alora_invocation_tokens (activated LoRA) is not supported',
  use_bdlora: 'use_bdlora is not supported',
  arrow_config: 'arrow_config (routing between LoRA experts) is not supported',
};

const isSet = (v: unknown) => !(v === undefined || v === null || v === false || (Array.isArray(v) && v.length === 0) || (typeof v === 'object' && v !== null && Object.keys(v).length === 0));

/** PEFT's module matching: a string is a regular expression matched against the whole name; a list matches a name or a `.`-suffix. */
export function moduleMatcher(field: string, spec: unknown, suffix = '.'): (name: string) => boolean {
  if (typeof spec === 'string') {
    const re = configRegex(field, spec, (p) => `^(?:${p})$`); // Python's re.fullmatch
    return (name) => re.test(name);
  }
  if (!Array.isArray(spec) || !spec.every((s) => typeof s === 'string')) return fail('invalid_config', `${field} must be a list of module names or a regular expression string`);
  return (name) => spec.some((s: string) => name === s || name.endsWith(`${suffix}${s}`));
}

/**
 * `layers_to_transform` (an index or a list) keeps the modules of those layers only, the layer index
 * being the number after the first `<name>.` segment of the module's name (PEFT's
 * check_target_module_exists: `.*?\.[^.]*\.(\d+)\.`), or after a segment `layers_pattern` names.
 */
function layerFilter(cfg: Record<string, unknown>): (name: string) => boolean {
  const indexes = cfg.layers_to_transform;
  if (indexes === undefined || indexes === null || (Array.isArray(indexes) && indexes.length === 0)) return () => true;
  const list = typeof indexes === 'number' ? [indexes] : indexes;
  if (!Array.isArray(list) || !list.every((i) => Number.isInteger(i) && i >= 0)) return fail('invalid_config', `layers_to_transform must be a layer index or a list of them, got ${JSON.stringify(indexes)}`);
  const raw = cfg.layers_pattern;
  const patterns = raw === undefined || raw === null || raw === '' || (Array.isArray(raw) && raw.length === 0) ? null : typeof raw === 'string' ? [raw] : raw;
  if (patterns !== null && !(Array.isArray(patterns) && patterns.every((p) => typeof p === 'string'))) return fail('invalid_config', `layers_pattern must be a string or a list of strings, got ${JSON.stringify(raw)}`);
  // Python's re.match anchors every alternative of the pattern at the start: hence the group.
  const finders = patterns === null ? [/^.*?\.[^.]*\.(\d+)\./] : patterns.map((p) => configRegex('layers_pattern', p, (q) => `^(?:.*?\\.${q}\\.(\\d+)\\.)`));
  return (name) => {
    for (const f of finders) {
      const m = f.exec(name);
      if (!m) continue;
      // PEFT fails here (int(None)): a pattern whose match gives no layer number.
      if (m[1] === undefined) fail('invalid_config', `layers_pattern ${JSON.stringify(patterns)} matches ${name} without a layer number after it`);
      return list.includes(Number(m[1]));
    }
    return false;
  };
}

/** The base model's modules that `target_modules` (minus `exclude_modules`, within `layers_to_transform`) selects; at least one. */
function targets(cfg: Record<string, unknown>, modules: LinearModule[]): LinearModule[] {
  if (cfg.target_modules === undefined || cfg.target_modules === null) fail('invalid_config', 'target_modules is required');
  const all = cfg.target_modules === 'all-linear';
  const target = all ? () => true : moduleMatcher('target_modules', cfg.target_modules);
  const exclude = isSet(cfg.exclude_modules) ? moduleMatcher('exclude_modules', cfg.exclude_modules) : () => false;
  // As in PEFT, layers_to_transform applies to a list of module names matched by suffix (all-linear
  // is one), not to a regular expression nor to a module the list names in full.
  const layers = typeof cfg.target_modules === 'string' && !all ? () => true : layerFilter(cfg);
  const inLayers = (name: string) => (Array.isArray(cfg.target_modules) && cfg.target_modules.includes(name)) || layers(name);
  const chosen = modules.filter((m) => target(m.name) && !exclude(m.name) && inLayers(m.name));
  if (chosen.length === 0) fail('invalid_config', `target_modules ${JSON.stringify(cfg.target_modules)} matches no linear module of the base model`);
  return chosen;
}

/** Tensor names without PEFT's `base_model.model.` prefix, each checked to name `<module>.<suffix>` of a chosen module. */
function byModule(type: string, raw: Map<string, Tensor>, chosen: LinearModule[], suffixes: string[]): Map<string, Tensor> {
  const wanted = new Set(chosen.flatMap((m) => suffixes.map((s) => `${m.name}.${s}`)));
  const out = new Map<string, Tensor>();
  for (const [name, t] of raw) {
    const bare = name.startsWith('base_model.model.') ? name.slice('base_model.model.'.length) : name;
    if (!wanted.has(bare)) fail('unexpected_tensors', `'${name}' is not a ${suffixes.join(' or ')} tensor of a module that target_modules selects in the base model`);
    out.set(bare, t);
  }
  for (const name of wanted) if (!out.has(name)) fail('unexpected_tensors', `${type} adapter has no tensor 'base_model.model.${name}'`);
  return out;
}

function expectShape(name: string, t: Tensor, shape: number[]): void {
  if (t.shape.join() !== shape.join()) fail('wrong_shape', `'${name}' has shape [${t.shape}], expected [${shape}]`);
}

/** A zeroed array of n floats that posting to the worker does not copy. */
const sharedFloats = (n: number) => new Float32Array(new SharedArrayBuffer(n * 4));

function checkRefused(cfg: Record<string, unknown>): void {
  for (const [field, why] of Object.entries(REFUSED)) if (isSet(cfg[field])) fail('unsupported_option', `${why} (${field}: ${JSON.stringify(cfg[field])})`);
}

/**
 * `rank_pattern` / `alpha_pattern`: per-module values. The first key (in the file's order) that
 * matches the module's name or a `.`-suffix of it as a regular expression wins (PEFT's
 * get_pattern_key: `(.*\.)?(key)$`); `fallback` elsewhere.
 */
function perModule(cfg: Record<string, unknown>, field: 'rank_pattern' | 'alpha_pattern', fallback: number, valid: (v: unknown) => boolean, what: string): (name: string) => number {
  const spec = cfg[field] ?? {};
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) return fail('invalid_config', `${field} must be an object of module patterns to ${what}s`);
  const entries = Object.entries(spec).map(([key, v]): [RegExp, number] => {
    if (!valid(v)) fail('invalid_config', `${field}[${JSON.stringify(key)}] must be a ${what}, got ${JSON.stringify(v)}`);
    return [configRegex(field, key, (k) => `^(?:.*\\.)?(?:${k})$`), v as number];
  });
  return (name) => entries.find(([re]) => re.test(name))?.[1] ?? fallback;
}

export function parseLora(cfg: Record<string, unknown>, raw: Map<string, Tensor>, base: LinearShape): AdapterTensors {
  checkRefused(cfg);
  checkPatternBudget(cfg, ['target_modules', 'exclude_modules', 'layers_pattern', 'rank_pattern', 'alpha_pattern']);
  if ((cfg.bias ?? 'none') !== 'none') fail('unsupported_option', `bias ${JSON.stringify(cfg.bias)} is not supported (none)`);
  const isRank = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 1;
  const isAlpha = (v: unknown) => typeof v === 'number' && Number.isFinite(v);
  if (!isRank(cfg.r)) fail('invalid_config', `r must be a positive integer, got ${JSON.stringify(cfg.r)}`);
  const alpha = cfg.lora_alpha ?? 8;
  if (!isAlpha(alpha)) fail('invalid_config', `lora_alpha must be a number, got ${JSON.stringify(alpha)}`);
  if (typeof (cfg.use_rslora ?? false) !== 'boolean') fail('invalid_config', 'use_rslora must be a boolean');
  if (typeof (cfg.fan_in_fan_out ?? false) !== 'boolean') fail('invalid_config', 'fan_in_fan_out must be a boolean');
  const rankOf = perModule(cfg, 'rank_pattern', cfg.r as number, isRank, 'positive integer rank');
  const alphaOf = perModule(cfg, 'alpha_pattern', alpha as number, isAlpha, 'number');
  const chosen = targets(cfg, linearModules(base));
  const tensors = byModule('LORA', raw, chosen, ['lora_A.weight', 'lora_B.weight']);
  // Every module's shapes and scale are checked before anything is allocated.
  const plan = chosen.map((m) => {
    const r = rankOf(m.name);
    const scale = alphaOf(m.name) / (cfg.use_rslora ? Math.sqrt(r) : r);
    if (!(Math.abs(scale) <= MAX_ADAPTER_VALUE)) fail('value_too_large', `${m.name}: lora_alpha / r is ${scale}; it is limited to ±${MAX_ADAPTER_VALUE}, far beyond trained ones (values near float32's limit overflow the forward pass)`);
    const A = tensors.get(`${m.name}.lora_A.weight`)!;
    const B = tensors.get(`${m.name}.lora_B.weight`)!;
    expectShape(`${m.name}.lora_A.weight`, A, [r, m.in]);
    expectShape(`${m.name}.lora_B.weight`, B, [m.out, r]);
    return { m, r, scale, A, B };
  });
  // A batch lays every module of the adapter out at its largest rank (model-constants.ts loraStacks):
  // with rank_pattern, one module of a far larger rank would make a small upload hold gigabytes there.
  const rank = Math.max(...plan.map((x) => x.r));
  const own = plan.reduce((n, x) => n + x.r * (x.m.in + x.m.out), 0);
  const padded = rank * plan.reduce((n, x) => n + x.m.in + x.m.out, 0);
  if (padded > Math.max(MAX_PADDING_RATIO * own, MAX_PADDED_FLOATS)) {
    fail('invalid_config', `rank_pattern: a batch lays every targeted module out at the largest rank, ${rank}: ${Math.round((padded * 4) / 2 ** 20)} MiB against the adapter's own ${Math.round((own * 4) / 2 ** 20)} MiB (at most ${MAX_PADDING_RATIO}× or ${(MAX_PADDED_FLOATS * 4) / 2 ** 20} MiB); give its modules closer ranks`);
  }
  const modules: Record<string, { a: Float32Array; b: Float32Array }> = {};
  for (const { m, r, scale, A, B } of plan) {
    // Stored as the graph multiplies them, at the module's own rank: A [in, r], B [r, out] with the
    // scale folded in. The executor lays them side by side at the adapter's largest rank (zeros beyond).
    const a = sharedFloats(m.in * r);
    for (let k = 0; k < r; k++) for (let i = 0; i < m.in; i++) a[i * r + k] = A.data[k * m.in + i];
    const b = sharedFloats(r * m.out);
    for (let o = 0; o < m.out; o++) for (let k = 0; k < r; k++) b[k * m.out + o] = B.data[o * r + k] * scale;
    modules[m.name] = { a, b };
  }
  return { key: '', kind: 'lora', virtualTokens: 0, lora: { rank, modules } };
}

export function parseIa3(cfg: Record<string, unknown>, raw: Map<string, Tensor>, base: LinearShape): AdapterTensors {
  checkRefused(cfg);
  checkPatternBudget(cfg, ['target_modules', 'exclude_modules', 'feedforward_modules', 'layers_pattern']);
  const chosen = targets(cfg, linearModules(base));
  const ff = cfg.feedforward_modules ?? [];
  // PEFT (IA3Config, _check_target_module_feedforward): a list matches by plain suffix and must be a subset of target_modules.
  const feedforward = moduleMatcher('feedforward_modules', ff, '');
  if (Array.isArray(ff) && Array.isArray(cfg.target_modules)) {
    const extra = ff.filter((f) => !(cfg.target_modules as unknown[]).includes(f));
    if (extra.length > 0) fail('invalid_config', `feedforward_modules must be a subset of target_modules; not targeted: ${JSON.stringify(extra)}`);
  }
  const tensors = byModule('IA3', raw, chosen, ['ia3_l']);
  const ia3: Record<string, { side: 'in' | 'out'; scale: Float32Array }> = {};
  for (const m of chosen) {
    const t = tensors.get(`${m.name}.ia3_l`)!;
    const side = feedforward(m.name) ? 'in' : 'out';
    expectShape(`${m.name}.ia3_l`, t, side === 'in' ? [1, m.in] : [m.out, 1]);
    const scale = sharedFloats(t.data.length);
    scale.set(t.data);
    ia3[m.name] = { side, scale };
  }
  return { key: '', kind: 'ia3', virtualTokens: 0, ia3 };
}
