import t from 'tap';
import { FormatError } from '../../src/errors.js';
import { encodeSafetensors, parseSafetensors } from '../../src/model/safetensors.js';

/** A file with `header` as its JSON header and `data` bytes after it. */
function file(header: unknown, dataBytes: number, headerLen?: number): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLen ?? json.length), true);
  out.set(json, 8);
  return out;
}

function code(buf: Uint8Array): string {
  try {
    parseSafetensors(buf);
  } catch (e) {
    if (e instanceof FormatError) return e.code;
    throw e;
  }
  return 'ok';
}

t.test('round trip of F32', async (t) => {
  const data = Float32Array.from([1, -2.5, 3e-8, 42]);
  const { tensors } = parseSafetensors(encodeSafetensors({ w: { shape: [2, 2], data } }));
  t.same([...tensors.get('w')!.data], [...data]);
  t.same(tensors.get('w')!.shape, [2, 2]);
});

t.test('F16 and BF16 decode to float32', async (t) => {
  const buf = file({ h: { dtype: 'F16', shape: [3], data_offsets: [0, 6] }, b: { dtype: 'BF16', shape: [2], data_offsets: [6, 10] } }, 10);
  const view = new DataView(buf.buffer);
  const at = buf.length - 10;
  view.setUint16(at, 0x3c00, true); // 1.0
  view.setUint16(at + 2, 0xc000, true); // -2.0
  view.setUint16(at + 4, 0x0001, true); // smallest subnormal
  view.setUint16(at + 6, 0x3f80, true); // bf16 1.0
  view.setUint16(at + 8, 0x4049, true); // bf16 3.140625
  const { tensors } = parseSafetensors(buf);
  t.same([...tensors.get('h')!.data], [1, -2, 2 ** -24]);
  t.same([...tensors.get('b')!.data], [1, 3.140625]);
});

t.test('each malformed file is refused with its own code', async (t) => {
  const ok = { w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  t.equal(code(file(ok, 8)), 'ok');
  t.equal(code(new Uint8Array(5)), 'safetensors_truncated');
  t.equal(code(file(ok, 8, 10_000)), 'safetensors_header_out_of_bounds');
  t.equal(code(file(ok, 8, 200 * 1024 * 1024)), 'safetensors_header_too_large');
  t.equal(code(file('{"w": ', 8)), 'safetensors_invalid_json');
  t.equal(code(file({ w: { dtype: 'I64', shape: [1], data_offsets: [0, 8] } }, 8)), 'safetensors_unknown_dtype');
  t.equal(code(file({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8)), 'safetensors_size_mismatch');
  t.equal(code(file({ w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, 4)), 'safetensors_out_of_bounds');
  t.equal(code(file({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12)), 'safetensors_overlap');
  t.equal(code(file({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } }, 12)), 'safetensors_gap');
  t.equal(code(file(ok, 12)), 'safetensors_trailing_bytes');
  t.equal(code(file({ w: { dtype: 'F32', shape: [-1], data_offsets: [0, 8] } }, 8)), 'safetensors_invalid_shape');
  t.equal(code(file({ w: { dtype: 'F32', shape: [2], data_offsets: [8, 0] } }, 8)), 'safetensors_invalid_offsets');
});
