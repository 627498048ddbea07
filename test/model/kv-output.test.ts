import ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import t from 'tap';
import { addKvOutput, KV_OUTPUT, layerKv } from '../../src/model/kv-output.js';
import { GraphBuilder } from '../../src/model/onnx-builder.js';

/** A graph whose L layers' keys and values are inputs [B, H, S, hd], packed by addKvOutput. */
async function packed(L: number, B: number, H: number, S: number, hd: number) {
  const g = new GraphBuilder();
  const layers: [string, string][] = [];
  for (let l = 0; l < L; l++) layers.push([g.input(`k${l}`, 'float', [B, H, S, hd]), g.input(`v${l}`, 'float', [B, H, S, hd])]);
  addKvOutput(g, layers, H, hd);
  const bytes = g.serialize(20, 'kv output');
  const feeds: Record<string, ort.Tensor> = {};
  const n = B * H * S * hd;
  // Every value names its tensor and place: (2l + isValue) · n + i.
  for (let l = 0; l < L; l++) {
    feeds[`k${l}`] = new ort.Tensor('float32', Float32Array.from({ length: n }, (_, i) => 2 * l * n + i), [B, H, S, hd]);
    feeds[`v${l}`] = new ort.Tensor('float32', Float32Array.from({ length: n }, (_, i) => (2 * l + 1) * n + i), [B, H, S, hd]);
  }
  const session = await ort.InferenceSession.create(bytes);
  const out = (await session.run(feeds))[KV_OUTPUT].data as Float32Array;
  const concats = onnxProto.onnx.ModelProto.decode(bytes).graph!.node!.filter((nd) => nd.opType === 'Concat');
  return { out, n, concats };
}

for (const L of [4, 22]) {
  t.test(`${L} layers: new_kv holds each layer's keys then values, and layerKv reads them back`, async (t) => {
    const { out, n, concats } = await packed(L, 2, 3, 5, 4);
    t.equal(out.length, 2 * L * n);
    t.ok(out.every((x, i) => x === i), 'block 2l is layer l keys, block 2l + 1 its values');
    for (let l = 0; l < L; l++) {
      const { keys, values } = layerKv(out, L, l);
      t.equal(keys[0], 2 * l * n);
      t.equal(values[n - 1], (2 * l + 2) * n - 1);
      t.equal(keys.length + values.length, 2 * n);
    }
    // WebGPU binds a Concat's inputs and output as storage buffers, at most 16 per shader.
    t.ok(concats.every((c) => c.input!.length <= 15), `${concats.length} Concat(s), none with more than 15 inputs`);
  });
}
