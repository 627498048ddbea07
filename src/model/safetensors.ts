import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { FormatError } from '../errors.js';

/** Header length above this is refused before any parse: a real header is a few KB. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;
const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };

export interface Tensor {
  readonly shape: number[];
  readonly data: Float32Array;
}

export type TensorMap = Map<string, Tensor>;

function fail(code: string, message: string): never {
  throw new FormatError(`safetensors_${code}`, message);
}

interface Entry {
  name: string;
  dtype: string;
  shape: number[];
  /** Byte range within the data section (after the header). */
  begin: number;
  end: number;
}

/**
 * Parses a safetensors buffer into float32 tensors. Every offset is checked against the buffer
 * before it is read, so a hostile file can only produce an error, never an out-of-bounds read.
 */
export function parseSafetensors(buf: Uint8Array): { tensors: TensorMap; metadata: Record<string, string> } {
  if (buf.byteLength < 8) fail('truncated', `file is ${buf.byteLength} bytes, shorter than the 8-byte header length`);
  const headerLen = headerLength(buf.subarray(0, 8), buf.byteLength);
  const { entries, metadata } = parseHeader(buf.subarray(8, 8 + headerLen), buf.byteLength - 8 - headerLen);
  const tensors: TensorMap = new Map();
  for (const e of entries) {
    tensors.set(e.name, { shape: e.shape, data: decodeTensor(buf.subarray(8 + headerLen + e.begin, 8 + headerLen + e.end), e.dtype) });
  }
  return { tensors, metadata };
}

/** The header length from a file's first 8 bytes, checked against the file size. */
function headerLength(first8: Uint8Array, fileBytes: number): number {
  const headerLen = Number(new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true));
  if (headerLen > MAX_HEADER_BYTES) fail('header_too_large', `header length ${headerLen} exceeds the 100 MB limit`);
  if (8 + headerLen > fileBytes) fail('header_out_of_bounds', `header length ${headerLen} runs past the end of the ${fileBytes}-byte file`);
  return headerLen;
}

/** Validates a JSON header against a data section of `dataLen` bytes: every entry in bounds, tiled exactly. */
function parseHeader(bytes: Uint8Array, dataLen: number): { entries: Entry[]; metadata: Record<string, string> } {
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    fail('invalid_json', `header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('invalid_json', 'header is not a JSON object');

  const entries: Entry[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = (raw ?? {}) as Record<string, string>;
      continue;
    }
    const info = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof info !== 'object' || info === null) fail('invalid_entry', `tensor '${name}' is not an object`);
    const { dtype, shape, data_offsets: offsets } = info;
    if (typeof dtype !== 'string' || !(dtype in DTYPE_BYTES)) fail('unknown_dtype', `tensor '${name}' has unsupported dtype ${JSON.stringify(dtype)} (F32, F16, BF16)`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) fail('invalid_shape', `tensor '${name}' has an invalid shape`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
      fail('invalid_offsets', `tensor '${name}' has invalid data_offsets`);
    }
    const [begin, end] = offsets as number[];
    if (end < begin) fail('invalid_offsets', `tensor '${name}' ends before it begins`);
    if (end > dataLen) fail('out_of_bounds', `tensor '${name}' ends at byte ${end}, past the ${dataLen} bytes of data`);
    const expected = (shape as number[]).reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    if (end - begin !== expected) fail('size_mismatch', `tensor '${name}' has ${end - begin} bytes, but shape ${JSON.stringify(shape)} × ${dtype} needs ${expected}`);
    entries.push({ name, dtype, shape: shape as number[], begin, end });
  }
  // The data section must be tiled exactly: no overlaps, no gaps, nothing trailing.
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const e of sorted) {
    if (e.begin < cursor) fail('overlap', `tensor '${e.name}' overlaps the tensor before it`);
    if (e.begin > cursor) fail('gap', `there is a gap of ${e.begin - cursor} bytes before tensor '${e.name}'`);
    cursor = e.end;
  }
  if (cursor !== dataLen) fail('trailing_bytes', `${dataLen - cursor} bytes after the last tensor are not described by the header`);
  return { entries, metadata };
}

/**
 * A safetensors file on disk, opened by its header only: each tensor is read (and decoded to float32)
 * when asked for, so a checkpoint larger than memory can be streamed one tensor at a time.
 */
export class SafetensorsFile {
  readonly tensors = new Map<string, { dtype: string; shape: number[] }>();
  private readonly entries = new Map<string, Entry>();
  private readonly dataStart: number;

  constructor(readonly path: string) {
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      const first8 = new Uint8Array(8);
      if (size < 8 || readSync(fd, first8, 0, 8, 0) !== 8) fail('truncated', `${path} is shorter than the 8-byte header length`);
      const headerLen = headerLength(first8, size);
      const header = new Uint8Array(headerLen);
      readFully(fd, header, 8);
      this.dataStart = 8 + headerLen;
      for (const e of parseHeader(header, size - this.dataStart).entries) {
        this.entries.set(e.name, e);
        this.tensors.set(e.name, { dtype: e.dtype, shape: e.shape });
      }
    } finally {
      closeSync(fd);
    }
  }

  read(name: string): Float32Array {
    const e = this.entries.get(name);
    if (!e) throw new Error(`${this.path} has no tensor '${name}'`);
    const bytes = new Uint8Array(e.end - e.begin);
    const fd = openSync(this.path, 'r');
    try {
      readFully(fd, bytes, this.dataStart + e.begin);
    } finally {
      closeSync(fd);
    }
    return decodeTensor(bytes, e.dtype);
  }
}

function readFully(fd: number, into: Uint8Array, position: number): void {
  // readSync moves at most 2 GiB per call: loop.
  for (let done = 0; done < into.byteLength; ) {
    const n = readSync(fd, into, done, Math.min(into.byteLength - done, 1 << 30), position + done);
    if (n === 0) fail('truncated', `file ended at byte ${position + done}`);
    done += n;
  }
}

/** F32, F16 or BF16 little-endian bytes as float32 (F32 aligned bytes are reused without a copy). */
function decodeTensor(bytes: Uint8Array, dtype: string): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  if (dtype === 'F32' && bytes.byteOffset % 4 === 0 && bytes.byteLength === bytes.buffer.byteLength) return new Float32Array(bytes.buffer, 0, n);
  const out = new Float32Array(n);
  if (dtype === 'F32') {
    for (let i = 0; i < n; i++) out[i] = view.getFloat32(i * 4, true);
  } else if (dtype === 'BF16') {
    const u32 = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) u32[i] = view.getUint16(i * 2, true) << 16;
  } else {
    for (let i = 0; i < n; i++) out[i] = halfToFloat(view.getUint16(i * 2, true));
  }
  return out;
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

/** Serialises float32 tensors (tests and tools write adapters with it). */
export function encodeSafetensors(tensors: Record<string, { shape: number[]; data: Float32Array }>): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  // Pads the header with spaces so the data starts 8-byte aligned, as the format recommends.
  const headerBytes = new Uint8Array(json.length + ((8 - (json.length % 8)) % 8)).fill(0x20);
  headerBytes.set(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const t of Object.values(tensors)) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
    at += t.data.byteLength;
  }
  return out;
}
