/**
 * Writes a Hugging Face GPT-2 checkpoint as a GGUF v3 file that llama.cpp loads, with the key and
 * tensor names of llama.cpp's own converter (convert_hf_to_gguf.py, `GPT2Model`, and gguf-py's
 * `SpecialVocab`), so the benchmark's peer runs exactly the weights the server runs.
 */
import { readFileSync, existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { FormatError } from '../errors.js';
import { loadCheckpoint, type Checkpoint } from '../model/checkpoint.js';

/** A metadata value with the GGUF type it is written as. */
export type GgufValue =
  | { type: 'uint32'; value: number }
  | { type: 'float32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'string[]'; value: string[] }
  | { type: 'int32[]'; value: number[] };

/** A float32 tensor; `shape` is row-major (numpy order), the file stores it reversed (ggml's ne[]). */
export interface GgufTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian uint32
const GGUF_VERSION = 3;
/** The default alignment; llama.cpp's converter writes no `general.alignment` key for it. */
export const GGUF_ALIGNMENT = 32;
// gguf_type values of the GGUF specification.
const TYPE = { uint32: 4, int32: 5, float32: 6, bool: 7, string: 8, array: 9 } as const;
const GGML_TYPE_F32 = 0;
/** gguf-py's TokenType. */
export const TOKEN_TYPE = { normal: 1, control: 3, userDefined: 4, unused: 5 } as const;

/** Appends little-endian values to a growing byte buffer. */
class ByteWriter {
  private buf = new Uint8Array(1 << 16);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  private put(n: number, write: (view: DataView, at: number) => void): void {
    this.reserve(n);
    write(this.view, this.length);
    this.length += n;
  }

  u32(v: number): void {
    this.put(4, (d, at) => d.setUint32(at, v, true));
  }

  i32(v: number): void {
    this.put(4, (d, at) => d.setInt32(at, v, true));
  }

  u64(v: number): void {
    this.put(8, (d, at) => d.setBigUint64(at, BigInt(v), true));
  }

  f32(v: number): void {
    this.put(4, (d, at) => d.setFloat32(at, v, true));
  }

  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }

  /** A GGUF string: uint64 byte length, then UTF-8 without a terminator. */
  str(s: string): void {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.bytes(b);
  }

  padTo(alignment: number): void {
    const pad = (alignment - (this.length % alignment)) % alignment;
    this.bytes(new Uint8Array(pad));
  }

  result(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

function writeValue(w: ByteWriter, v: GgufValue): void {
  switch (v.type) {
    case 'uint32':
      w.u32(TYPE.uint32);
      w.u32(v.value);
      return;
    case 'float32':
      w.u32(TYPE.float32);
      w.f32(v.value);
      return;
    case 'bool':
      w.u32(TYPE.bool);
      w.bytes(Uint8Array.of(v.value ? 1 : 0));
      return;
    case 'string':
      w.u32(TYPE.string);
      w.str(v.value);
      return;
    case 'string[]':
      w.u32(TYPE.array);
      w.u32(TYPE.string);
      w.u64(v.value.length);
      for (const s of v.value) w.str(s);
      return;
    case 'int32[]':
      w.u32(TYPE.array);
      w.u32(TYPE.int32);
      w.u64(v.value.length);
      for (const x of v.value) w.i32(x);
      return;
  }
}

/** Serialises metadata and F32 tensors as GGUF v3: header, key/values, tensor infos, aligned data. */
export function encodeGguf(metadata: [string, GgufValue][], tensors: GgufTensor[]): Uint8Array {
  const w = new ByteWriter();
  w.u32(GGUF_MAGIC);
  w.u32(GGUF_VERSION);
  w.u64(tensors.length);
  w.u64(metadata.length);
  for (const [key, value] of metadata) {
    w.str(key);
    writeValue(w, value);
  }
  // Each tensor's offset is relative to the data section and aligned, as ggml requires.
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) throw new FormatError('gguf_tensor_size', `tensor '${t.name}' has ${t.data.length} values, shape [${t.shape}] needs ${n}`);
    offsets.push(offset);
    offset += t.data.byteLength + ((GGUF_ALIGNMENT - (t.data.byteLength % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT);
  }
  tensors.forEach((t, i) => {
    w.str(t.name);
    w.u32(t.shape.length);
    for (const d of [...t.shape].reverse()) w.u64(d);
    w.u32(GGML_TYPE_F32);
    w.u64(offsets[i]);
  });
  w.padTo(GGUF_ALIGNMENT);
  for (const t of tensors) {
    w.bytes(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    w.padTo(GGUF_ALIGNMENT);
  }
  return w.result();
}

/** Hugging Face's Conv1D stores [in, out]; llama.cpp wants the Linear layout [out, in]. */
function transpose(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  return out;
}

/** The tensors under llama.cpp's names (gguf-py tensor_mapping.py, MODEL_ARCH.GPT2). */
export function gpt2Tensors(ckpt: Checkpoint): GgufTensor[] {
  const { config: c, weights } = ckpt;
  const get = (hf: string) => ({ shape: weights.shape(hf)!, data: weights.read(hf) }); // loadCheckpoint has checked every name and shape
  const plain = (name: string, hf: string): GgufTensor => ({ name, shape: get(hf).shape, data: get(hf).data });
  const conv1d = (name: string, hf: string): GgufTensor => {
    const [rows, cols] = get(hf).shape;
    return { name, shape: [cols, rows], data: transpose(get(hf).data, rows, cols) };
  };
  const out = [plain('token_embd.weight', 'transformer.wte.weight'), plain('position_embd.weight', 'transformer.wpe.weight')];
  for (let l = 0; l < c.layers; l++) {
    const hf = `transformer.h.${l}`;
    const blk = `blk.${l}`;
    out.push(
      plain(`${blk}.attn_norm.weight`, `${hf}.ln_1.weight`),
      plain(`${blk}.attn_norm.bias`, `${hf}.ln_1.bias`),
      conv1d(`${blk}.attn_qkv.weight`, `${hf}.attn.c_attn.weight`),
      plain(`${blk}.attn_qkv.bias`, `${hf}.attn.c_attn.bias`),
      conv1d(`${blk}.attn_output.weight`, `${hf}.attn.c_proj.weight`),
      plain(`${blk}.attn_output.bias`, `${hf}.attn.c_proj.bias`),
      plain(`${blk}.ffn_norm.weight`, `${hf}.ln_2.weight`),
      plain(`${blk}.ffn_norm.bias`, `${hf}.ln_2.bias`),
      conv1d(`${blk}.ffn_up.weight`, `${hf}.mlp.c_fc.weight`),
      plain(`${blk}.ffn_up.bias`, `${hf}.mlp.c_fc.bias`),
      conv1d(`${blk}.ffn_down.weight`, `${hf}.mlp.c_proj.weight`),
      plain(`${blk}.ffn_down.bias`, `${hf}.mlp.c_proj.bias`),
    );
  }
  out.push(plain('output_norm.weight', 'transformer.ln_f.weight'), plain('output_norm.bias', 'transformer.ln_f.bias'));
  // A tied head (no `lm_head.weight` in the checkpoint) gets no `output` tensor, as in the current
  // converter: llama.cpp then uses token_embd for the head. An untied head is written as `output`.
  if (weights.shape('lm_head.weight')) out.push(plain('output.weight', 'lm_head.weight'));
  return out;
}

interface TokenizerFiles {
  tokenizer: {
    model: { type: string; vocab: Record<string, number>; merges: (string | [string, string])[] };
    added_tokens?: { id: number; content: string; special: boolean }[];
  };
  /** tokenizer_config.json, where the special tokens are named by content. */
  tokenizerConfig: Record<string, unknown>;
  /** config.json, whose `*_token_id` fill in what tokenizer_config.json does not name. */
  modelConfig: Record<string, unknown>;
}

/** What `_set_vocab_gpt2` and `SpecialVocab(load_merges=True)` write for a byte-level BPE tokenizer. */
export function gpt2Vocab(files: TokenizerFiles, vocabSize: number, pre = 'gpt-2'): [string, GgufValue][] {
  const { model, added_tokens: added = [] } = files.tokenizer;
  if (model?.type !== 'BPE') throw new FormatError('unsupported_tokenizer', `tokenizer model ${model?.type} is not BPE`);
  const byId = new Map<number, string>();
  for (const [token, id] of Object.entries(model.vocab)) byId.set(id, token);
  for (const t of added) byId.set(t.id, t.content);
  const addedById = new Map(added.map((t) => [t.id, t]));
  const tokens: string[] = [];
  const types: number[] = [];
  for (let i = 0; i < vocabSize; i++) {
    const token = byId.get(i);
    const a = addedById.get(i);
    tokens.push(token ?? `[PAD${i}]`);
    types.push(token === undefined ? TOKEN_TYPE.unused : a ? (a.special ? TOKEN_TYPE.control : TOKEN_TYPE.userDefined) : TOKEN_TYPE.normal);
  }
  // Pair merges are joined with a space; a space inside a part becomes U+0120, as gguf-py does.
  const merges = model.merges.map((m) => (Array.isArray(m) ? m.map((p) => p.replaceAll(' ', '\u0120')).join(' ') : m));
  const meta: [string, GgufValue][] = [
    ['tokenizer.ggml.model', { type: 'string', value: 'gpt2' }],
    ['tokenizer.ggml.pre', { type: 'string', value: pre }],
    ['tokenizer.ggml.tokens', { type: 'string[]', value: tokens }],
    ['tokenizer.ggml.token_type', { type: 'int32[]', value: types }],
    ['tokenizer.ggml.merges', { type: 'string[]', value: merges }],
  ];
  const idOf = new Map(tokens.map((t, i) => [t, i]));
  for (const [kind, key] of [['bos', 'bos_token_id'], ['eos', 'eos_token_id'], ['unk', 'unknown_token_id'], ['pad', 'padding_token_id']]) {
    const named = files.tokenizerConfig[`${kind}_token`];
    const content = typeof named === 'object' && named !== null ? (named as { content?: unknown }).content : named;
    const fromConfig = files.modelConfig[`${kind}_token_id`];
    const id = (typeof content === 'string' ? idOf.get(content) : undefined) ?? (typeof fromConfig === 'number' ? fromConfig : undefined);
    if (id !== undefined) meta.push([`tokenizer.ggml.${key}`, { type: 'uint32', value: id }]);
  }
  for (const kind of ['bos', 'eos']) {
    const add = files.tokenizerConfig[`add_${kind}_token`];
    if (typeof add === 'boolean') meta.push([`tokenizer.ggml.add_${kind}_token`, { type: 'bool', value: add }]);
  }
  return meta;
}

/** The whole GGUF file of a Hugging Face GPT-2 folder (config.json, model.safetensors, tokenizer.json). */
export function gpt2ToGguf(modelDir: string): Uint8Array {
  const ckpt = loadCheckpoint(modelDir);
  if (ckpt.config.modelType !== 'gpt2') throw new Error(`gpt2ToGguf converts GPT-2 checkpoints, not ${ckpt.config.modelType}`);
  const c = ckpt.config;
  // tokenizer_config.json is optional (special tokens then come from config.json); tokenizer.json is not.
  const readJson = (name: string) => (existsSync(join(modelDir, name)) ? JSON.parse(readFileSync(join(modelDir, name), 'utf8')) : {});
  const metadata: [string, GgufValue][] = [
    ['general.architecture', { type: 'string', value: 'gpt2' }],
    ['general.type', { type: 'string', value: 'model' }],
    ['general.name', { type: 'string', value: basename(modelDir) }],
    ['gpt2.block_count', { type: 'uint32', value: c.layers }],
    ['gpt2.context_length', { type: 'uint32', value: c.nPositions }],
    ['gpt2.embedding_length', { type: 'uint32', value: c.hidden }],
    // The converter writes 4 × n_embd; c.inner is that unless config.json sets n_inner.
    ['gpt2.feed_forward_length', { type: 'uint32', value: c.inner }],
    ['gpt2.attention.head_count', { type: 'uint32', value: c.heads }],
    ['gpt2.attention.layer_norm_epsilon', { type: 'float32', value: c.layerNormEps }],
    ['general.file_type', { type: 'uint32', value: 0 }], // LlamaFileType.ALL_F32
    ...gpt2Vocab(
      { tokenizer: JSON.parse(readFileSync(join(modelDir, 'tokenizer.json'), 'utf8')), tokenizerConfig: readJson('tokenizer_config.json'), modelConfig: readJson('config.json') },
      c.vocabSize,
    ),
    ['general.quantization_version', { type: 'uint32', value: 2 }],
  ];
  return encodeGguf(metadata, gpt2Tensors(ckpt));
}
