import { FormatError } from '../../errors.js';
import type { Architecture, ModelConfig } from './architecture.js';
import { gpt2 } from './gpt2.js';
import { llama } from './llama.js';

/** The graph builder for each supported `model_type`. */
const BY_MODEL_TYPE: Record<string, Architecture> = {
  gpt2: gpt2 as Architecture,
  llama: llama as Architecture,
  mistral: llama as Architecture,
  qwen2: llama as Architecture,
};

export const SUPPORTED_MODEL_TYPES = Object.keys(BY_MODEL_TYPE);

export function architectureOf(modelType: unknown): Architecture {
  const arch = typeof modelType === 'string' && Object.hasOwn(BY_MODEL_TYPE, modelType) ? BY_MODEL_TYPE[modelType] : undefined;
  if (!arch) {
    throw new FormatError('unsupported_architecture', `unsupported architecture: model_type '${String(modelType)}' (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`);
  }
  return arch;
}

export function parseConfig(raw: Record<string, unknown>): ModelConfig {
  return architectureOf(raw.model_type).parseConfig(raw);
}
