import onnxProto from 'onnx-proto';
import type { GraphBuilder } from './onnx-builder.js';

const { onnx } = onnxProto;

/**
 * Per-row LoRA and IA3 on the linear modules of a decoder, shared by every architecture builder.
 *
 * A linear module is described by its Hugging Face module path (`transformer.h.0.attn.c_attn`,
 * `model.layers.0.self_attn.q_proj`) and its input and output widths; an architecture lists its
 * modules once (`linearModules`), and both the graph builder and the adapter parser read that list,
 * so an adapter is checked against exactly the modules the graph can adapt.
 *
 * LoRA, batched: the distinct LoRA adapters of a batch are stacked along the rank axis, `<m>.lora_A`
 * [in, K] and `<m>.lora_B` [K, out] (K = the sum of their ranks, each adapter's scale — lora_alpha/r,
 * or /sqrt(r) with rsLoRA — folded into its B block, zeros where it does not target m), and
 * `lora_select` [R, 1, K] holds each row's 0/1 selection of its own adapter's block. A row's update
 * is ((x A) ⊙ select) B: one shared product with the stack, not one small product per row, and the
 * other blocks contribute exact zeros. The host rebuilds the stack only when the set of LoRA
 * adapters in the batch changes (bench/lora.ts compares it with padded per-row factors and with a
 * gather from a table of resident adapters).
 * IA3: `<m>.ia3_in` [R, 1, in] and `<m>.ia3_out` [R, 1, out] scale each row's input (PEFT's
 * feedforward modules) or output (bias included, as PEFT does); ones for other rows.
 * The base weights are never merged with an adapter: one frozen initializer serves every row.
 */
export interface LinearModule {
  /** Hugging Face module path, as PEFT names it in tensor names and matches it in target_modules. */
  name: string;
  in: number;
  out: number;
}

/** The architecture facts linearModules needs; GPT-2's ModelConfig has them. */
export interface LinearShape {
  modelType: string;
  layers: number;
  hidden: number;
  inner: number;
}

/** The linear modules that LoRA and IA3 may target, per architecture. */
export function linearModules(c: LinearShape): LinearModule[] {
  if (c.modelType !== 'gpt2') throw new Error(`no linear-module table for model_type ${c.modelType}`);
  const out: LinearModule[] = [];
  for (let l = 0; l < c.layers; l++) {
    const p = `transformer.h.${l}`;
    out.push(
      { name: `${p}.attn.c_attn`, in: c.hidden, out: 3 * c.hidden },
      { name: `${p}.attn.c_proj`, in: c.hidden, out: c.hidden },
      { name: `${p}.mlp.c_fc`, in: c.hidden, out: c.inner },
      { name: `${p}.mlp.c_proj`, in: c.inner, out: c.hidden },
    );
  }
  return out;
}

export const LORA_SELECT = 'lora_select';
export const adapterInputNames = (m: string) => ({ loraA: `${m}.lora_A`, loraB: `${m}.lora_B`, ia3In: `${m}.ia3_in`, ia3Out: `${m}.ia3_out` });

/** Declares the per-row adapter inputs: the shared LoRA selection and four inputs per module. */
export function declareAdapterInputs(g: GraphBuilder, modules: LinearModule[]): void {
  g.input(LORA_SELECT, 'float', ['lora_rows', 1, 'lora_rank']);
  for (const m of modules) {
    const n = adapterInputNames(m.name);
    g.input(n.loraA, 'float', [m.in, 'lora_rank']);
    g.input(n.loraB, 'float', ['lora_rank', m.out]);
    g.input(n.ia3In, 'float', ['ia3_rows', 1, m.in]);
    g.input(n.ia3Out, 'float', ['ia3_rows', 1, m.out]);
  }
}

/**
 * y = ((x ⊙ ia3_in) W + b + ((x A) ⊙ select) B) ⊙ ia3_out for x [B, S, in], per row. `weight` is an
 * [in, out] value (a builder with [out, in] checkpoints — Llama — transposes its initializer once at
 * build time); `bias` may be null. A row carries at most one adapter, so LoRA and IA3 never meet on a row.
 */
export function adaptedLinear(g: GraphBuilder, x: string, module: string, weight: string, bias: string | null): string {
  const n = adapterInputNames(module);
  let y = g.one('MatMul', [g.one('Mul', [x, n.ia3In]), weight]);
  if (bias) y = g.one('Add', [y, bias]);
  const update = g.one('MatMul', [g.one('Mul', [g.one('MatMul', [x, n.loraA]), LORA_SELECT]), n.loraB]);
  return g.one('Mul', [g.one('Add', [y, update]), n.ia3Out]);
}

/** The bool input that picks the graph's branch: true when some row of the batch has LoRA or IA3. */
export const ADAPTED_FLAG = 'lora_ia3_rows';

/**
 * One model whose body runs with or without the LoRA/IA3 ops: an `If` on ADAPTED_FLAG whose two
 * branches are the same body built twice, once through adaptedLinear and once with plain linears.
 * Measured (bench/lora.ts): the adapter ops of every module cost an all-base decode step 20–26 %, in
 * op dispatch rather than arithmetic; behind the `If`, a batch without LoRA/IA3 rows runs the plain
 * body and pays for one `If`. The weights stay outer-scope initializers, stored once and read by
 * both branches; the adapter inputs are fed in both cases (empty or broadcast, a few bytes).
 * `adapted` and `plain` are serialised models with the same outputs, `plain`'s inputs and
 * initializers a subset of `adapted`'s.
 */
export function branchOnAdapters(adapted: Uint8Array, plain: Uint8Array, opset: number, docString: string): Uint8Array {
  const a = onnx.ModelProto.decode(adapted).graph!;
  const p = onnx.ModelProto.decode(plain).graph!;
  const outer = new Set([...a.input!.map((i) => i.name!), ...a.initializer!.map((t) => t.name!)]);
  // A subgraph may not shadow an outer name, and its values are renamed apart from the outputs of the If.
  const branch = (g: onnxProto.onnx.IGraphProto, tag: string) => {
    const rename = (n: string) => (n === '' || outer.has(n) ? n : `${tag}/${n}`);
    return onnx.GraphProto.create({
      name: tag,
      node: g.node!.map((nd) => onnx.NodeProto.create({ ...nd, name: `${tag}/${nd.name}`, input: nd.input!.map(rename), output: nd.output!.map(rename) })),
      output: g.output!.map((o) => onnx.ValueInfoProto.create({ ...o, name: rename(o.name!) })),
    });
  };
  const T = onnx.AttributeProto.AttributeType;
  const ifNode = onnx.NodeProto.create({
    opType: 'If',
    name: 'if_lora_ia3',
    input: [ADAPTED_FLAG],
    output: a.output!.map((o) => o.name!),
    attribute: [
      onnx.AttributeProto.create({ name: 'then_branch', type: T.GRAPH, g: branch(a, 'adapted') }),
      onnx.AttributeProto.create({ name: 'else_branch', type: T.GRAPH, g: branch(p, 'plain') }),
    ],
  });
  const flag = onnx.ValueInfoProto.create({ name: ADAPTED_FLAG, type: { tensorType: { elemType: onnx.TensorProto.DataType.BOOL, shape: { dim: [] } } } });
  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: 'softprompt-server',
    docString,
    opsetImport: [{ domain: '', version: opset }],
    graph: onnx.GraphProto.create({ name: 'model', node: [ifNode], initializer: a.initializer, input: [...a.input!, flag], output: a.output }),
  });
  return onnx.ModelProto.encode(model).finish();
}
