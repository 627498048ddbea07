import { join } from 'node:path';
import t from 'tap';
import { adapterParser, type AdapterFiles } from '../../src/adapters/format.js';
import { readAdapterFolder } from '../../src/adapters/fs-store.js';
import { parseLora } from '../../src/adapters/lora.js';
import { FeedContext } from '../../src/executor/model-constants.js';
import { ADAPTER_INPUTS } from '../../src/model/adapter-ops.js';
import { FormatError } from '../../src/errors.js';
import { loadBaseModel } from '../../src/model/base-model.js';
import { encodeSafetensors, parseSafetensors } from '../../src/model/safetensors.js';
import { adapterFiles, adaptersCopy, multipart, reference, ROOT, startServer } from '../helpers.js';

const model = loadBaseModel(join(ROOT, 'models', 'demo-gpt2'), join(ROOT, '.cache'));
const parse = adapterParser(model);
const folder = (name: string) => readAdapterFolder(join(ROOT, 'adapters', name));
type Tensors = Record<string, { shape: number[]; data: Float32Array }>;
const tensorsOf = (name: string): Tensors => Object.fromEntries(parseSafetensors(folder(name).weights).tensors);
const configOf = (name: string) => JSON.parse(folder(name).config.toString('utf8')) as Record<string, unknown>;
const files = (cfg: Record<string, unknown>, tensors: Tensors): AdapterFiles => ({ config: Buffer.from(JSON.stringify(cfg)), weights: Buffer.from(encodeSafetensors(tensors)) });
const P = 'base_model.model.transformer.h';

function failure(f: AdapterFiles): string {
  try {
    parse('x', f);
  } catch (e) {
    if (e instanceof FormatError) return `${e.code}: ${e.message}`;
    throw e;
  }
  return 'ok';
}

/** Each mutation of pos-lora or pos-ia3, and the code and message fragment it must be refused with. */
const lora = configOf('pos-lora');
const ia3 = configOf('pos-ia3');
const loraT = tensorsOf('pos-lora');
const ia3T = tensorsOf('pos-ia3');
const without = (t: Tensors, name: string) => Object.fromEntries(Object.entries(t).filter(([k]) => k !== name));
const MUTATIONS: [string, AdapterFiles, RegExp][] = [
  ['wrong shape', files(lora, { ...loraT, [`${P}.0.attn.c_attn.lora_B.weight`]: { shape: [767, 8], data: new Float32Array(767 * 8) } }), /^wrong_shape: .*h\.0\.attn\.c_attn\.lora_B\.weight.*\[768,8\]/],
  ['unknown module', files(lora, { ...loraT, [`${P}.9.attn.c_attn.lora_A.weight`]: { shape: [8, 256], data: new Float32Array(8 * 256) } }), /^unexpected_tensors: .*h\.9\.attn\.c_attn/],
  ['a module that target_modules does not select', files({ ...lora, target_modules: ['c_attn'] }, loraT), /^unexpected_tensors: .*c_proj/],
  ['missing tensor', files(lora, without(loraT, `${P}.3.mlp.c_proj.lora_B.weight`)), /^unexpected_tensors: .*no tensor .*h\.3\.mlp\.c_proj\.lora_B/],
  ['DoRA', files({ ...lora, use_dora: true }, loraT), /^unsupported_option: .*use_dora/],
  ['rank_pattern naming a rank the tensors do not have', files({ ...lora, rank_pattern: { c_attn: 4 } }, loraT), /^wrong_shape: .*c_attn\.lora_A\.weight.*\[4,256\]/],
  ['rank_pattern of a fraction', files({ ...lora, rank_pattern: { c_attn: 4.5 } }, loraT), /^invalid_config: rank_pattern\["c_attn"\] must be a positive integer rank/],
  ['rank_pattern a list', files({ ...lora, rank_pattern: [4] }, loraT), /^invalid_config: rank_pattern must be an object/],
  ['alpha_pattern of a string', files({ ...lora, alpha_pattern: { c_attn: '4' } }, loraT), /^invalid_config: alpha_pattern\["c_attn"\] must be a number/],
  ['rank_pattern naming a rank far beyond the tensors (refused before anything is allocated)', files({ ...lora, rank_pattern: { 'h.3.attn.c_proj': 1e300 } }, loraT), /^wrong_shape: .*h\.3\.attn\.c_proj\.lora_A\.weight/],
  ['rank_pattern 2^31 on the last module', files({ ...lora, rank_pattern: { 'h.3.mlp.c_proj': 2 ** 31 } }, loraT), /^wrong_shape: .*h\.3\.mlp\.c_proj\.lora_A\.weight/],
  ['one module at a rank that would make the batch layout 16 times the adapter', files({ ...lora, rank_pattern: { 'h.0.attn.c_attn': 4096 } }, { ...loraT, [`${P}.0.attn.c_attn.lora_A.weight`]: { shape: [4096, 256], data: new Float32Array(4096 * 256) }, [`${P}.0.attn.c_attn.lora_B.weight`]: { shape: [768, 4096], data: new Float32Array(768 * 4096) } }), /^invalid_config: rank_pattern: a batch lays every targeted module out at the largest rank, 4096: 176 MiB against the adapter's own 16 MiB/],
  ['alpha_pattern key a bad regex', files({ ...lora, alpha_pattern: { '(': 4 } }, loraT), /^invalid_config: alpha_pattern: .* is not a valid regular expression/],
  ['layers_to_transform leaving out layers the tensors have', files({ ...lora, layers_to_transform: [0] }, loraT), /^unexpected_tensors: .*h\.1\./],
  ['layers_to_transform of a string', files({ ...lora, layers_to_transform: '0' }, loraT), /^invalid_config: layers_to_transform must be/],
  ['layers_pattern naming no segment of the model', files({ ...lora, layers_to_transform: [0], layers_pattern: 'layers' }, loraT), /^invalid_config: target_modules .*matches no/],
  ['modules_to_save', files({ ...lora, modules_to_save: ['lm_head'] }, loraT), /^unsupported_option: .*modules_to_save/],
  ['lora_bias', files({ ...lora, lora_bias: true }, loraT), /^unsupported_option: .*lora_bias/],
  ['bias all', files({ ...lora, bias: 'all' }, loraT), /^unsupported_option: .*bias/],
  ['r differs from the tensors', files({ ...lora, r: 4 }, loraT), /^wrong_shape: /],
  ['r missing', files({ ...lora, r: undefined }, loraT), /^invalid_config: r must be/],
  ['target_modules matching nothing', files({ ...lora, target_modules: ['q_proj'] }, loraT), /^invalid_config: target_modules .*matches no/],
  ['target_modules a bad regex', files({ ...lora, target_modules: '(' }, loraT), /^invalid_config: target_modules: "\(" is not a valid/],
  ['target_modules unbalanced, which would escape a wrapper', files({ ...lora, target_modules: 'c_attn)|(.*' }, loraT), /^invalid_config: target_modules: .* is not a valid regular expression/],
  ['a lookahead (backtracking: exponential with the right group)', files({ ...lora, target_modules: '(?=t)(.|.){27}X' }, loraT), /^invalid_config: target_modules: .*cannot run in linear time/],
  ['a backreference in a rank_pattern key', files({ ...lora, rank_pattern: { '(c)_\\1': 4 } }, loraT), /^invalid_config: rank_pattern: .*cannot run in linear time/],
  ["a 6 KB rank_pattern key (the linear engine's time grows with it: 3.8 s)", files({ ...lora, rank_pattern: { ['(.|.)*'.repeat(1000)]: 4 } }, loraT), /^invalid_config: the config's regular expressions .* have 6000 characters together; at most 512/],
  ['a 199-character target_modules', files({ ...lora, target_modules: `(?:${'c_attn|'.repeat(27)}c_proj)` }, loraT), /^invalid_config: target_modules: .* has 199 characters; at most 128/],
  ['five capturing groups', files({ ...lora, target_modules: '(t)(r)(a)(n)(s).*' }, loraT), /^invalid_config: target_modules: .* has 5 capturing groups; at most 4/],
  ['five capturing groups, named or after an escaped backslash', files({ ...lora, target_modules: '\\\\(?<a>t)(r)(a)(n)(s)[(].*' }, loraT), /^invalid_config: target_modules: .* has 5 capturing groups; at most 4/],
  ['rank_pattern of 257 keys', files({ ...lora, rank_pattern: Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`k${i}`, 4])) }, loraT), /^invalid_config: the config's regular expressions .* have \d+ characters together; at most 512/],
  ['layers_pattern alternatives, each anchored as Python anchors them', files({ ...lora, layers_to_transform: [0], layers_pattern: 'x|h' }, loraT), /^invalid_config: target_modules .*matches no/],
  ['IA3 vector of the wrong side', files({ ...ia3, feedforward_modules: [] }, ia3T), /^wrong_shape: .*mlp\.c_proj\.ia3_l.*\[256,1\]/],
  ['IA3 feedforward module not targeted', files({ ...ia3, feedforward_modules: ['mlp.c_fc'] }, ia3T), /^invalid_config: feedforward_modules must be a subset/],
  ['lora_alpha huge (1e30): the scale would overflow the forward pass', files({ ...lora, lora_alpha: 1e30 }, loraT), /^value_too_large: transformer\.h\.0\.attn\.c_attn: lora_alpha \/ r is 1\.25e\+29/],
  ['IA3 scales near float32\'s limit', files(ia3, { ...ia3T, [`${P}.0.mlp.c_proj.ia3_l`]: { shape: ia3T[`${P}.0.mlp.c_proj.ia3_l`].shape, data: ia3T[`${P}.0.mlp.c_proj.ia3_l`].data.map(() => 3e38) } }), /^value_too_large: tensor .*h\.0\.mlp\.c_proj\.ia3_l/],
  ['IA3 unknown tensor', files(ia3, { ...ia3T, [`${P}.0.attn.c_attn.lora_A.weight`]: { shape: [8, 256], data: new Float32Array(8 * 256) } }), /^unexpected_tensors: /],
];

t.test('pos-lora and pos-ia3 parse; resident bytes are the tensor bytes', async (t) => {
  const l = parse('pos-lora', folder('pos-lora'));
  t.equal(l.peftType, 'LORA');
  t.equal(l.tensors.kind, 'lora');
  t.equal(l.tensors.lora!.rank, 8);
  // c_proj matches attn.c_proj and mlp.c_proj by suffix; c_fc is not targeted.
  t.same(Object.keys(l.tensors.lora!.modules).filter((m) => m.startsWith('transformer.h.0.')), ['transformer.h.0.attn.c_attn', 'transformer.h.0.attn.c_proj', 'transformer.h.0.mlp.c_proj']);
  const fileBytes = Object.values(loraT).reduce((n, x) => n + x.data.byteLength, 0);
  t.equal(l.residentBytes, fileBytes, `${l.residentBytes} resident bytes for ${fileBytes} bytes of F32 tensors`);
  // A is stored [in, r], B [r, out] with lora_alpha / r = 2 folded in.
  const A = loraT[`${P}.1.mlp.c_proj.lora_A.weight`];
  const B = loraT[`${P}.1.mlp.c_proj.lora_B.weight`];
  const m = l.tensors.lora!.modules['transformer.h.1.mlp.c_proj'];
  t.equal(m.a[5 * 8 + 3], A.data[3 * 1024 + 5]);
  t.equal(m.b[3 * 256 + 7], B.data[7 * 8 + 3] * 2);

  const i = parse('pos-ia3', folder('pos-ia3'));
  t.equal(i.tensors.kind, 'ia3');
  t.equal(i.tensors.ia3!['transformer.h.0.attn.c_attn'].side, 'out');
  t.equal(i.tensors.ia3!['transformer.h.0.mlp.c_proj'].side, 'in');
  t.equal(i.residentBytes, Object.values(ia3T).reduce((n, x) => n + x.data.byteLength, 0));
});

t.test('PEFT options: rsLoRA scale, regex and all-linear targets, exclude_modules', async (t) => {
  const rs = parse('x', files({ ...lora, use_rslora: true }, loraT)).tensors.lora!.modules['transformer.h.0.attn.c_attn'];
  const plain = parse('x', files(lora, loraT)).tensors.lora!.modules['transformer.h.0.attn.c_attn'];
  t.ok(Math.abs(rs.b[10] - (plain.b[10] / 2) * (16 / Math.sqrt(8))) < 1e-6, 'lora_alpha / sqrt(r)');
  const regex = parse('x', files({ ...lora, target_modules: '.*\\.(c_attn|c_proj)' }, loraT));
  t.equal(Object.keys(regex.tensors.lora!.modules).length, 12, 'a string is a full-match regular expression');
  t.match(failure(files({ ...lora, target_modules: 'c_attn' }, loraT)), /^invalid_config: .*matches no/, 'a regex matches the whole module name');
  const onlyAttn = Object.fromEntries(Object.entries(loraT).filter(([k]) => k.includes('c_attn')));
  t.equal(failure(files({ ...lora, target_modules: ['c_attn', 'c_proj'], exclude_modules: ['c_proj'] }, onlyAttn)), 'ok', 'exclude_modules');
  t.match(failure(files({ ...lora, target_modules: 'all-linear' }, loraT)), /no tensor .*mlp\.c_fc\.lora_A/, 'all-linear includes c_fc');
});

/** pos-lora's tensors with `change` applied to the A and B of each module whose name matches `module`. */
function mapModules(module: RegExp, change: (A: Tensors[string], B: Tensors[string]) => [Tensors[string], Tensors[string]] | null): Tensors {
  const out: Tensors = {};
  for (const [name, A] of Object.entries(loraT)) {
    if (!name.endsWith('lora_A.weight')) continue;
    const stem = name.slice(0, -'lora_A.weight'.length);
    const B = loraT[`${stem}lora_B.weight`];
    const changed = module.test(stem) ? change(A, B) : [A, B];
    if (changed) [out[`${stem}lora_A.weight`], out[`${stem}lora_B.weight`]] = changed;
  }
  return out;
}
/** The first `r` of a module's 8 ranks: A's first rows, B's first columns (B times `times`). */
const firstRanks = (r: number, times = 1) => (A: Tensors[string], B: Tensors[string]): [Tensors[string], Tensors[string]] => {
  const [rows, inF] = A.shape;
  const out = B.shape[0];
  return [
    { shape: [r, inF], data: A.data.slice(0, r * inF) },
    { shape: [out, r], data: Float32Array.from({ length: out * r }, (_, i) => B.data[Math.floor(i / r) * rows + (i % r)] * times) },
  ];
};
/** The same 8 ranks with all but the first `r` zeroed (B times `times`): what a rank-r module is, padded. */
const zeroPadded = (r: number, times = 1) => (A: Tensors[string], B: Tensors[string]): [Tensors[string], Tensors[string]] => {
  const rows = A.shape[0];
  return [
    { shape: A.shape, data: A.data.map((v, i) => (Math.floor(i / A.shape[1]) < r ? v : 0)) },
    { shape: B.shape, data: B.data.map((v, i) => (i % rows < r ? v * times : 0)) },
  ];
};
const scaled = (times: number) => (A: Tensors[string], B: Tensors[string]): [Tensors[string], Tensors[string]] => [A, { shape: B.shape, data: B.data.map((v) => v * times) }];
const stored = (cfg: Record<string, unknown>, tensors: Tensors) => parse('x', files(cfg, tensors)).tensors.lora!;
const feeds = new FeedContext(model.tensors);
let keys = 0;
/** The packed LoRA factors the executor feeds for one row of this adapter: what the graph multiplies. */
const packed = (cfg: Record<string, unknown>, tensors: Tensors) => {
  const adapter = { ...parse('x', files(cfg, tensors)).tensors, key: `k${keys++}` };
  const f = feeds.adapterFeeds([adapter]);
  return Object.fromEntries(Object.values(ADAPTER_INPUTS).map((name) => [name, f[name].data]));
};

t.test("PEFT's per-module options, each against the adapter it is equal to written out in full", async (t) => {
  // rank_pattern: c_attn at rank 4 is pos-lora's c_attn with its ranks 4..7 zeroed, at its own scale
  // lora_alpha / 4 (twice / 8: B doubled, exactly). Keys match a name or a `.`-suffix, as regexes.
  const attn = /c_attn\.$/;
  const padded = packed(lora, mapModules(attn, zeroPadded(4, 2)));
  for (const key of ['c_attn', 'attn.c_attn', 'h\\.\\d\\.attn\\.c_attn', 'transformer.h.[0-3].attn.c_attn']) {
    t.same(packed({ ...lora, rank_pattern: { [key]: 4 } }, mapModules(attn, firstRanks(4))), padded, `rank_pattern key ${key}`);
  }
  // Stored at the module's own rank (4 × 256 and 4 × 768 floats for c_attn), not padded: memory follows the tensors.
  const own = stored({ ...lora, rank_pattern: { c_attn: 4 } }, mapModules(attn, firstRanks(4))).modules['transformer.h.0.attn.c_attn'];
  t.same([own.a.length, own.b.length], [4 * 256, 4 * 768]);
  t.match(failure(files({ ...lora, rank_pattern: { 'ttn.c_attn': 4 } }, mapModules(attn, firstRanks(4)))), /^wrong_shape: /, 'a key matches at a dot, not inside a segment');
  t.same(packed({ ...lora, rank_pattern: { c_proj: 8, c_attn: 4 } }, mapModules(attn, firstRanks(4))), padded, 'the first matching key wins');
  // Every module below the adapter's r: the adapter's rank is its largest.
  const small = stored({ ...lora, r: 16, rank_pattern: { c_attn: 4, c_proj: 8 } }, mapModules(attn, firstRanks(4, 1)));
  t.equal(small.rank, 8, 'stored at the largest rank a module has');
  // alpha_pattern: layer 1's mlp.c_proj at lora_alpha 64 (scale 8, not 2) is its B times 4.
  const proj1 = /h\.1\.mlp\.c_proj\.$/;
  t.same(packed({ ...lora, alpha_pattern: { 'h.1.mlp.c_proj': 64 } }, loraT), packed(lora, mapModules(proj1, scaled(4))), 'alpha_pattern');
  // rsLoRA with per-module ranks: lora_alpha / sqrt(r) with each module's own r (c_attn at 4: 16 / 2 = 8, not 16 / sqrt(8)).
  const rs = stored({ ...lora, use_rslora: true, rank_pattern: { c_attn: 4 } }, mapModules(attn, firstRanks(4)));
  t.equal(rs.modules['transformer.h.0.attn.c_attn'].b[0], loraT[`${P}.0.attn.c_attn.lora_B.weight`].data[0] * 8);
  // layers_to_transform keeps those layers' modules only (the others have no tensors); layers_pattern names the segment.
  const odd = mapModules(/h\.[13]\./, (A, B) => [A, B]);
  const oddOnly = Object.fromEntries(Object.entries(odd).filter(([k]) => /h\.[13]\./.test(k)));
  for (const cfg of [{ layers_to_transform: [1, 3] }, { layers_to_transform: [3, 1], layers_pattern: 'h' }, { layers_to_transform: [1, 3], layers_pattern: ['layers', 'h'] }]) {
    t.same(Object.keys(stored({ ...lora, ...cfg }, oddOnly).modules).sort(), Object.keys(oddOnly).filter((k) => k.endsWith('lora_A.weight')).map((k) => k.slice('base_model.model.'.length, -'.lora_A.weight'.length)).sort(), JSON.stringify(cfg));
  }
  t.equal(Object.keys(stored({ ...lora, layers_to_transform: 2 }, Object.fromEntries(Object.entries(loraT).filter(([k]) => k.includes('h.2.')))).modules).length, 3, 'one index');
  // Patterns that backtrack exponentially run in linear time (they took 19 s per module name): this returns.
  t.equal(Object.keys(stored({ ...lora, rank_pattern: { '(.|.)*Z': 4, '(a+)+$': 2 }, exclude_modules: '(.|.)*Z' }, loraT).modules).length, 12, 'rank_pattern and exclude_modules that match nothing');
  // A regular expression target is not filtered by layer, as in PEFT.
  t.equal(Object.keys(stored({ ...lora, target_modules: '.*\\.(c_attn|c_proj)', layers_to_transform: [0] }, loraT).modules).length, 12);
});

t.test("layers_to_transform on Llama's module names (model.layers.N.…), by PEFT's default layer pattern and by layers_pattern", async (t) => {
  const llama = loadBaseModel(join(ROOT, 'test', 'fixtures', 'llama', 'tiny-llama'), join(ROOT, '.cache'));
  const dir = join(ROOT, 'test', 'fixtures', 'llama', 'tiny-llama', 'adapters', 'tiny-llama-lora');
  const f = readAdapterFolder(dir);
  const cfg = JSON.parse(f.config.toString('utf8')) as Record<string, unknown>;
  const layer1 = Object.fromEntries([...parseSafetensors(f.weights).tensors].filter(([k]) => k.includes('.layers.1.')));
  for (const extra of [{ layers_to_transform: [1] }, { layers_to_transform: 1, layers_pattern: 'layers' }]) {
    const modules = Object.keys(adapterParser(llama)('x', files({ ...cfg, ...extra }, layer1)).tensors.lora!.modules);
    t.equal(modules.length, 7, JSON.stringify(extra));
    t.ok(modules.every((m) => m.startsWith('model.layers.1.')), modules.join(', '));
  }
});

t.test('an adapter of one rank on a few modules of a larger model is taken, whatever its rank (the rank_pattern bound counts padding only)', async (t) => {
  // A Llama-shaped base, 16 layers × 1024 wide; PEFT's default targets for it, q_proj and v_proj, at r 64.
  const shape = { modelType: 'llama', layers: 16, hidden: 1024, inner: 2816, heads: 16, kvHeads: 16, headDim: 64 };
  const r = 64;
  const raw = new Map<string, { dtype: string; shape: number[]; data: Float32Array }>();
  for (let l = 0; l < shape.layers; l++) {
    for (const m of ['q_proj', 'v_proj']) {
      raw.set(`base_model.model.model.layers.${l}.self_attn.${m}.lora_A.weight`, { dtype: 'F32', shape: [r, 1024], data: new Float32Array(r * 1024) });
      raw.set(`base_model.model.model.layers.${l}.self_attn.${m}.lora_B.weight`, { dtype: 'F32', shape: [1024, r], data: new Float32Array(1024 * r) });
    }
  }
  const a = parseLora({ r, lora_alpha: 16, target_modules: ['q_proj', 'v_proj'] }, raw as never, shape);
  t.equal(Object.keys(a.lora!.modules).length, 32);
  t.equal(a.lora!.rank, 64);
});

t.test('through HTTP: an adapter with per-module options serves exactly what the same adapter written out in full serves', async (t) => {
  const server = await startServer({ ADAPTERS_DIR: adaptersCopy([]), ADMIN_TOKEN: 'admin' });
  t.teardown(() => server.close());
  const upload = async (task: string, cfg: Record<string, unknown>, tensors: Tensors) => {
    const body = multipart({ 'adapter_config.json': Buffer.from(JSON.stringify(cfg)), 'adapter_model.safetensors': Buffer.from(encodeSafetensors(tensors)) });
    const res = await server.app.inject({ method: 'PUT', url: `/v1/adapters/${task}`, payload: body.payload, headers: { ...body.headers, authorization: 'Bearer admin' } });
    t.equal(res.statusCode, 201, `${task}: ${res.body.slice(0, 200)}`);
  };
  const attn = /c_attn\.$/;
  const layer0 = /h\.[02]\./;
  await upload('patterns', { ...lora, rank_pattern: { c_attn: 4 }, alpha_pattern: { 'mlp.c_proj': 32 }, layers_to_transform: [1, 3] },
    Object.fromEntries(Object.entries(mapModules(attn, firstRanks(4))).filter(([k]) => !layer0.test(k))));
  // Written out in full: c_attn zero-padded at twice the B, mlp.c_proj's B doubled (alpha 32 / 16), layers 0 and 2 zero.
  const full = mapModules(/./, (A, B) => [A, B]);
  const written = Object.fromEntries(Object.entries(full).map(([k, v]) => [k, layer0.test(k) && k.endsWith('lora_B.weight') ? { shape: v.shape, data: new Float32Array(v.data.length) } : v]));
  const padded = mapModules(attn, zeroPadded(4, 2));
  const proj = mapModules(/mlp\.c_proj\.$/, scaled(2));
  for (const k of Object.keys(written)) if (!layer0.test(k)) written[k] = /c_attn/.test(k) ? padded[k] : /mlp\.c_proj/.test(k) ? proj[k] : written[k];
  await upload('written-out', lora, written);
  for (const text of ['In the beginning', 'The quick brown fox', 'love']) {
    const ask = async (model: string) => (await server.app.inject({ method: 'POST', url: '/v1/completions', payload: { model, prompt: text, max_tokens: 12, temperature: 0, logprobs: 5 } })).json().choices[0];
    const [a, b, base] = [await ask('patterns'), await ask('written-out'), await ask('base')];
    t.same(a, b, `${text}: the same tokens and log-probabilities`);
    t.not(JSON.stringify(a.logprobs.token_logprobs), JSON.stringify(base.logprobs.token_logprobs), `${text}: and not the base model's`);
  }
});

t.test('F16 and BF16 tensors are accepted', async (t) => {
  for (const dtype of ['F16', 'BF16'] as const) {
    const header: Record<string, unknown> = {};
    const parts: Buffer[] = [];
    let offset = 0;
    for (const [name, x] of Object.entries(loraT)) {
      const data = Buffer.alloc(x.data.length * 2);
      x.data.forEach((v, k) => data.writeUInt16LE(dtype === 'F16' ? toHalf(v) : new Uint32Array(Float32Array.of(v).buffer)[0] >>> 16, k * 2));
      header[name] = { dtype, shape: x.shape, data_offsets: [offset, offset + data.length] };
      offset += data.length;
      parts.push(data);
    }
    const json = Buffer.from(JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    const a = parse('x', { config: Buffer.from(JSON.stringify(lora)), weights: Buffer.concat([len, json, ...parts]) });
    const want = loraT[`${P}.2.attn.c_proj.lora_A.weight`].data[256 + 9];
    const got = a.tensors.lora!.modules['transformer.h.2.attn.c_proj'].a[9 * 8 + 1];
    t.ok(Math.abs(got - want) <= Math.abs(want) * (dtype === 'F16' ? 1e-3 : 1e-2), `${dtype}: ${got} vs ${want}`);
  }
});

/** float32 → IEEE half bits, round-to-nearest (normal range: enough for adapter weights). */
function toHalf(v: number): number {
  const f = new Uint32Array(Float32Array.of(v).buffer)[0];
  const sign = (f >>> 16) & 0x8000;
  const exp = ((f >>> 23) & 0xff) - 127 + 15;
  if (exp <= 0) return sign;
  return sign | ((exp << 10) + Math.round((f & 0x7fffff) / 8192));
}

t.test('every mutation is refused with a message that names what is wrong', async (t) => {
  for (const [what, f, want] of MUTATIONS) t.match(failure(f), want, what);
});

t.test('through HTTP: LoRA and IA3 uploads serve the reference; mutated uploads get 400 and change nothing', async (t) => {
  const server = await startServer({ ADAPTERS_DIR: adaptersCopy(['pos-lora']), ADMIN_TOKEN: 'admin' });
  t.teardown(() => server.close());
  const auth = { authorization: 'Bearer admin' };
  const upload = (task: string, parts: Record<string, Buffer | Uint8Array>) => {
    const body = multipart(parts);
    return server.app.inject({ method: 'PUT', url: `/v1/adapters/${task}`, payload: body.payload, headers: { ...body.headers, ...auth } });
  };
  const list = async () => (await server.app.inject({ method: 'GET', url: '/v1/adapters', headers: auth })).json();
  const greedy = async (task: string, adapter: string) => {
    const c = reference.cases.find((x) => x.adapter === adapter && x.text === 'In the beginning')!;
    const res = await server.app.inject({ method: 'POST', url: `/v1/tasks/${task}/generate`, payload: { prompt: c.text, raw: true, max_tokens: 20, temperature: 0 } });
    t.same(res.json().token_ids, c.greedy.at(-1) === 0 ? c.greedy.slice(0, -1) : c.greedy, `${task} serves ${adapter}'s reference`);
  };
  for (const name of ['pos-lora', 'pos-ia3']) {
    const res = await upload(`my-${name}`, adapterFiles(name));
    t.equal(res.statusCode, 201, `upload ${name}`);
    await greedy(`my-${name}`, name);
  }
  const before = await list();
  for (const [what, f] of MUTATIONS) {
    for (const task of ['pos-lora', 'brand-new']) {
      const res = await upload(task, { 'adapter_config.json': f.config, 'adapter_model.safetensors': f.weights });
      t.equal(res.statusCode, 400, `${what} → ${task}`);
      t.equal(res.json().error.code, 'invalid_adapter', `${what}: ${res.json().error.message}`);
    }
  }
  t.same(await list(), before, 'the registry is unchanged');
  await greedy('pos-lora', 'pos-lora');
});
