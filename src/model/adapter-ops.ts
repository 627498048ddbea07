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
 * The adapter inputs are packed, five tensors for all modules (each module's columns at its offset
 * in `adapterLayout`), because every input costs every run a conversion in onnxruntime-node:
 * - LoRA, batched: the distinct LoRA adapters of a batch are stacked along the rank axis, `lora_A`
 *   [Σin, K] and `lora_B` [K, Σout] (K = the sum of their ranks, each adapter's scale —
 *   lora_alpha/r, or /sqrt(r) with rsLoRA — folded into its B block, zeros where it does not target
 *   a module), and `lora_select` [R, 1, K] holds each row's 0/1 selection of its own adapter's block.
 *   A row's update is ((x A) ⊙ select) B: one shared product with the stack rather than one small
 *   product per row, and the other blocks add exact zeros. The host rebuilds the stack only when the
 *   set of LoRA adapters in the batch changes (bench/lora.ts compares this layout with padded
 *   per-row factors and with a gather from a table of resident adapters).
 * - IA3: `ia3_in` [R, 1, Σin] and `ia3_out` [R, 1, Σout] scale each row's input (PEFT's feedforward
 *   modules) or output (bias included, as PEFT does); ones for other rows, [1, 1, n] when none has IA3.
 * The base weights are never merged with an adapter: one frozen initializer serves every row.
 */
export interface LinearModule {
  /** Hugging Face module path, as PEFT names it in tensor names and matches it in target_modules. */
  name: string;
  in: number;
  out: number;
}

/** The architecture facts linearModules needs; every ModelConfig has them. */
export interface LinearShape {
  modelType: string;
  layers: number;
  hidden: number;
  inner: number;
  heads: number;
  kvHeads: number;
  headDim: number;
}

/** The linear modules that LoRA and IA3 may target, per architecture. */
export function linearModules(c: LinearShape): LinearModule[] {
  const out: LinearModule[] = [];
  if (c.modelType === 'gpt2') {
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
  if (!['llama', 'mistral', 'qwen2'].includes(c.modelType)) throw new Error(`no linear-module table for model_type ${c.modelType}`);
  const q = c.heads * c.headDim;
  const kv = c.kvHeads * c.headDim;
  for (let l = 0; l < c.layers; l++) {
    const p = `model.layers.${l}`;
    out.push(
      { name: `${p}.self_attn.q_proj`, in: c.hidden, out: q },
      { name: `${p}.self_attn.k_proj`, in: c.hidden, out: kv },
      { name: `${p}.self_attn.v_proj`, in: c.hidden, out: kv },
      { name: `${p}.self_attn.o_proj`, in: q, out: c.hidden },
      { name: `${p}.mlp.gate_proj`, in: c.hidden, out: c.inner },
      { name: `${p}.mlp.up_proj`, in: c.hidden, out: c.inner },
      { name: `${p}.mlp.down_proj`, in: c.inner, out: c.hidden },
    );
  }
  return out;
}

/** The packed adapter inputs of the graph (see the module comment). */
export const ADAPTER_INPUTS = { select: 'lora_select', loraA: 'lora_A', loraB: 'lora_B', ia3In: 'ia3_in', ia3Out: 'ia3_out' } as const;

/** A module with the offsets of its input and output columns in the packed inputs. */
export interface ModuleSlot extends LinearModule {
  inAt: number;
  outAt: number;
}

export interface AdapterLayout {
  slots: ModuleSlot[];
  byName: Map<string, ModuleSlot>;
  totalIn: number;
  totalOut: number;
}

export function adapterLayout(modules: LinearModule[]): AdapterLayout {
  let totalIn = 0;
  let totalOut = 0;
  const slots = modules.map((m) => {
    const slot = { ...m, inAt: totalIn, outAt: totalOut };
    totalIn += m.in;
    totalOut += m.out;
    return slot;
  });
  return { slots, byName: new Map(slots.map((s) => [s.name, s])), totalIn, totalOut };
}

/**
 * Bytes of the packed LoRA stacks (A [Σin, K] and B [K, Σout], float32) per unit of K, the ranks of
 * a batch's LoRAs summed: each LoRA takes its rank's columns over every module, targeted or not.
 */
export function loraStackBytesPerRank(c: LinearShape): number {
  const { totalIn, totalOut } = adapterLayout(linearModules(c));
  return 4 * (totalIn + totalOut);
}

/** Outputs of one Split: with its input, WebGPU's limit of 16 storage buffers per shader. */
const MAX_SPLIT = 15;

/** One module's parts of the packed adapter inputs. */
export interface ModuleInputs {
  loraA: string;
  loraB: string;
  ia3In: string;
  ia3Out: string;
}

/**
 * Declares the packed per-row adapter inputs and splits each into its modules' parts, by name. One
 * Split per input rather than a Slice per module: one kernel each, four in all (a small tree of them
 * past 15 modules, for WebGPU).
 */
export function declareAdapterInputs(g: GraphBuilder, layout: AdapterLayout): Map<string, ModuleInputs> {
  const n = ADAPTER_INPUTS;
  g.input(n.select, 'float', ['lora_rows', 1, 'lora_rank']);
  g.input(n.loraA, 'float', [layout.totalIn, 'lora_rank']);
  g.input(n.loraB, 'float', ['lora_rank', layout.totalOut]);
  g.input(n.ia3In, 'float', ['ia3_rows', 1, layout.totalIn]);
  g.input(n.ia3Out, 'float', ['ia3_rows', 1, layout.totalOut]);
  // WebGPU binds a Split's input and each output as a storage buffer, at most 16 per shader: past 15
  // modules (GPT-2 has 16, TinyLlama 154) the split becomes a tree whose nodes have at most 15 outputs.
  const split = (value: string, key: 'in' | 'out', axis: number): string[] => {
    const size = (i: number) => layout.slots[i][key];
    let node = 0;
    const tree = (v: string, idx: number[]): string[] => {
      const sizes = `${value}_split_${node++}`;
      if (idx.length <= MAX_SPLIT) return g.op('Split', [v, g.ints(sizes, idx.map(size))], { axis }, idx.length);
      const per = Math.ceil(idx.length / MAX_SPLIT);
      const chunks: number[][] = [];
      for (let i = 0; i < idx.length; i += per) chunks.push(idx.slice(i, i + per));
      const parts = g.op('Split', [v, g.ints(sizes, chunks.map((c) => c.reduce((t, i) => t + size(i), 0)))], { axis }, chunks.length);
      return chunks.flatMap((c, j) => tree(parts[j], c));
    };
    return tree(value, layout.slots.map((_, i) => i));
  };
  const [loraA, loraB, ia3In, ia3Out] = [split(n.loraA, 'in', 0), split(n.loraB, 'out', 1), split(n.ia3In, 'in', 2), split(n.ia3Out, 'out', 2)];
  return new Map(layout.slots.map((m, i) => [m.name, { loraA: loraA[i], loraB: loraB[i], ia3In: ia3In[i], ia3Out: ia3Out[i] }]));
}

/**
 * y = ((x ⊙ ia3_in) W + b + ((x A) ⊙ select) B) ⊙ ia3_out for x [B, S, in], per row, with one
 * module's parts of the packed inputs. `weight` is an [in, out] value (a builder with [out, in]
 * checkpoints — Llama — transposes its initializer once at build time); `bias` may be null. A row
 * carries at most one adapter, so LoRA and IA3 never meet on a row.
 */
export function adaptedLinear(g: GraphBuilder, x: string, m: ModuleInputs, weight: string, bias: string | null): string {
  let y = g.one('MatMul', [g.one('Mul', [x, m.ia3In]), weight]);
  if (bias) y = g.one('Add', [y, bias]);
  const update = g.one('MatMul', [g.one('Mul', [g.one('MatMul', [x, m.loraA]), ADAPTER_INPUTS.select]), m.loraB]);
  return g.one('Mul', [g.one('Add', [y, update]), m.ia3Out]);
}

/** The bool input that picks the graph's branch: true when some row of the batch has LoRA or IA3. */
export const ADAPTED_FLAG = 'lora_ia3_rows';

/**
 * One model whose body runs with or without the LoRA/IA3 ops: an `If` on ADAPTED_FLAG whose two
 * branches are the same body built twice, once through adaptedLinear and once with plain linears.
 * Measured (bench/lora.ts, CPU time on the demo model): with the adapter ops always on, an all-base
 * batch pays 9 % at decode batch 1, 4–7 % at batch 8–64 and 21 % in prefill, in op dispatch rather
 * than arithmetic; behind the `If` it pays about 6 % at batch 1 (the If and five more inputs) and
 * nothing measurable beyond. The weights stay outer-scope initializers, stored once and read by
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
