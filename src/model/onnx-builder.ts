import { writeSync } from 'node:fs';
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
const FLOAT = onnx.TensorProto.DataType.FLOAT;
const INT64 = onnx.TensorProto.DataType.INT64;
const ELEM = { float: FLOAT, int64: INT64, double: onnx.TensorProto.DataType.DOUBLE };
export type ElemType = keyof typeof ELEM;

type Dim = number | string;
/** `{ float }` marks a float attribute whose value happens to be whole. */
type Attr = number | number[] | string | { float: number };

/** Page alignment lets ONNX Runtime map each tensor straight from the file. */
const ALIGN = 4096;

/**
 * ONNX external data: weights written to a side file as they come, so a model's weights are never
 * all in memory at once and the protobuf (capped at 2 GiB) holds only their offsets.
 */
export class ExternalData {
  private offset = 0;
  /** Written tensors by name: a second graph body built on the same sink refers to the same bytes. */
  private readonly written = new Map<string, { offset: number; length: number }>();

  /** `location` is the side file's name relative to the graph file, as ONNX Runtime resolves it. */
  constructor(
    private readonly fd: number,
    readonly location: string,
  ) {}

  append(name: string, bytes: Uint8Array): { offset: number; length: number } {
    const seen = this.written.get(name);
    if (seen) return seen;
    const offset = Math.ceil(this.offset / ALIGN) * ALIGN;
    for (let done = 0; done < bytes.byteLength; ) done += writeSync(this.fd, bytes, done, Math.min(bytes.byteLength - done, 1 << 30), offset + done);
    this.offset = offset + bytes.byteLength;
    this.written.set(name, { offset, length: bytes.byteLength });
    return { offset, length: bytes.byteLength };
  }
}

/** A small typed front-end over the ONNX protobuf: names values, adds nodes, serialises. */
export class GraphBuilder {
  private readonly nodes: InstanceType<typeof onnx.NodeProto>[] = [];
  private readonly initializers: InstanceType<typeof onnx.TensorProto>[] = [];
  private readonly inputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly outputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private counter = 0;

  /** With `external`, weights go to its side file; without, inline into the protobuf. */
  constructor(private readonly external?: ExternalData) {}

  input(name: string, type: ElemType, dims: Dim[]): string {
    this.inputs.push(valueInfo(name, ELEM[type], dims));
    return name;
  }

  output(value: string, name: string, dims: Dim[], type: ElemType = 'float'): void {
    this.nodes.push(onnx.NodeProto.create({ opType: 'Identity', input: [value], output: [name], name: `out_${name}` }));
    this.outputs.push(valueInfo(name, ELEM[type], dims));
  }

  weight(name: string, dims: number[], data: Float32Array): string {
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (!this.external) {
      this.initializers.push(onnx.TensorProto.create({ name, dims, dataType: FLOAT, rawData: bytes }));
      return name;
    }
    const { offset, length } = this.external.append(name, bytes);
    this.initializers.push(
      onnx.TensorProto.create({
        name,
        dims,
        dataType: FLOAT,
        dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
        externalData: [
          { key: 'location', value: this.external.location },
          { key: 'offset', value: String(offset) },
          { key: 'length', value: String(length) },
        ],
      }),
    );
    return name;
  }

  ints(name: string, values: number[]): string {
    const data = new BigInt64Array(values.map(BigInt));
    this.initializers.push(
      onnx.TensorProto.create({ name, dims: [values.length], dataType: INT64, rawData: new Uint8Array(data.buffer) }),
    );
    return name;
  }

  scalar(name: string, value: number): string {
    this.initializers.push(onnx.TensorProto.create({ name, dims: [], dataType: FLOAT, floatData: [value] }));
    return name;
  }

  /** Adds a node and returns its output names (one per `outputs`). */
  op(opType: string, inputs: string[], attrs: Record<string, Attr> = {}, outputs = 1, domain = ''): string[] {
    const id = this.counter++;
    const out = Array.from({ length: outputs }, (_, i) => `${opType.toLowerCase()}_${id}_${i}`);
    this.nodes.push(
      onnx.NodeProto.create({
        opType,
        domain,
        name: `${opType}_${id}`,
        input: inputs,
        output: out,
        attribute: Object.entries(attrs).map(([name, v]) => attribute(name, v)),
      }),
    );
    return out;
  }

  one(opType: string, inputs: string[], attrs: Record<string, Attr> = {}): string {
    return this.op(opType, inputs, attrs)[0];
  }

  serialize(opset: number, docString: string): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: 'softprompt-server',
      docString,
      opsetImport: [{ domain: '', version: opset }],
      graph: onnx.GraphProto.create({
        name: 'model',
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      }),
    });
    return onnx.ModelProto.encode(model).finish();
  }
}

function valueInfo(name: string, elemType: number, dims: Dim[]) {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  });
}

function attribute(name: string, v: Attr) {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof v === 'string') return onnx.AttributeProto.create({ name, type: T.STRING, s: new TextEncoder().encode(v) });
  if (typeof v === 'object' && !Array.isArray(v)) return onnx.AttributeProto.create({ name, type: T.FLOAT, f: v.float });
  if (Array.isArray(v)) return onnx.AttributeProto.create({ name, type: T.INTS, ints: v });
  if (Number.isInteger(v)) return onnx.AttributeProto.create({ name, type: T.INT, i: v });
  return onnx.AttributeProto.create({ name, type: T.FLOAT, f: v });
}

/** Row-major [rows, cols] → [cols, rows]: graphs store weights in the layout their MatMuls read. */
export function transpose(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) for (let col = 0; col < cols; col++) out[col * rows + r] = data[r * cols + col];
  return out;
}
