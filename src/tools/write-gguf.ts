/**
 * Writes a Hugging Face GPT-2 folder as an F32 GGUF file for llama.cpp (the benchmark's peer).
 * Usage: node dist/src/tools/write-gguf.js [MODEL_DIR] [OUT.gguf]
 * (defaults: $MODEL_DIR or models/demo-gpt2, and .cache/<model folder name>-f32.gguf).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { gpt2ToGguf } from './gguf.js';

const modelDir = process.argv[2] ?? process.env.MODEL_DIR ?? 'models/demo-gpt2';
const out = process.argv[3] ?? `.cache/${basename(modelDir)}-f32.gguf`;
const bytes = gpt2ToGguf(modelDir);
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, bytes);
console.log(`wrote ${out} (${bytes.length} bytes) from ${modelDir}`);
