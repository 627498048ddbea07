import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES, type RefCase } from '../helpers.js';

/** A case of test/fixtures/llama/reference.json (same meaning as the GPT-2 reference's). */
export interface LlamaCase extends RefCase {
  model: string;
  min_top2_gap: number;
}

export const LLAMA_FIXTURES = join(FIXTURES, 'llama');
export const llamaCases: LlamaCase[] = JSON.parse(readFileSync(join(LLAMA_FIXTURES, 'reference.json'), 'utf8')).cases;
export const LLAMA_MODELS = ['tiny-llama', 'tiny-qwen2'];

/** Every case of a model: base, prompt, prefix, BitFit (qwen2), LoRA and IA3. */
export function servedCases(model: string): LlamaCase[] {
  return llamaCases.filter((c) => c.model === model);
}
