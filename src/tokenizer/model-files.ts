import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FormatError } from '../errors.js';

/** What a checkpoint folder says about its tokenizer, besides `tokenizer.json` itself. */
export interface TokenizerFiles {
  /** `tokenizer.json`, parsed. */
  tokenizer: TokenizerJson;
  /** `tokenizer_config.json`, or `{}` where the folder has none. */
  tokenizerConfig: Record<string, unknown>;
  /** End-of-sequence ids from `config.json` then `generation_config.json` (each an id or a list). */
  eosTokenIds: number[];
  /** `config.json`'s `bos_token_id`, the fallback where `tokenizer_config.json` names no BOS token. */
  bosTokenId: number | null;
}

export interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
  normalized?: boolean;
}

export interface TokenizerJson {
  model: { type?: string };
  added_tokens?: AddedTokenJson[];
  post_processor?: PostProcessorJson | null;
  [key: string]: unknown;
}

interface PostProcessorJson {
  type: string;
  single?: ({ SpecialToken: { id: string } } | { Sequence: unknown })[];
  special_tokens?: Record<string, { ids: number[] }>;
  processors?: PostProcessorJson[];
}

function readJson(path: string, optional: boolean): Record<string, unknown> | null {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if (optional && (e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new FormatError('invalid_tokenizer', `${path} is not valid JSON: ${(e as Error).message}`);
  }
}

/** `eos_token_id` is an id or, since Llama 3, a list of ids. */
function ids(v: unknown): number[] {
  const list = Array.isArray(v) ? v : v === undefined || v === null ? [] : [v];
  return list.filter((x): x is number => Number.isInteger(x) && x >= 0);
}

export function readTokenizerFiles(dir: string): TokenizerFiles {
  const tokenizer = readJson(join(dir, 'tokenizer.json'), false) as unknown as TokenizerJson;
  const config = readJson(join(dir, 'config.json'), true) ?? {};
  const generation = readJson(join(dir, 'generation_config.json'), true) ?? {};
  const eos = [...ids(config.eos_token_id), ...ids(generation.eos_token_id)];
  const bos = ids(config.bos_token_id);
  return {
    tokenizer,
    tokenizerConfig: readJson(join(dir, 'tokenizer_config.json'), true) ?? {},
    eosTokenIds: [...new Set(eos)],
    bosTokenId: bos.length ? bos[0] : null,
  };
}

/** A token named in `tokenizer_config.json`: a string or `{content: string}`. */
export function tokenName(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

/**
 * The token a fast tokenizer's post-processor puts before a single text (Llama 2's and Llama 3.1's
 * `TemplateProcessing` put BOS there), or null. This is what `add_special_tokens` adds when
 * `tokenizer_config.json` does not say `add_bos_token`.
 */
export function templateBosId(p: PostProcessorJson | null | undefined): number | null {
  if (!p) return null;
  if (p.type === 'Sequence') {
    for (const q of p.processors ?? []) {
      const id = templateBosId(q);
      if (id !== null) return id;
    }
    return null;
  }
  if (p.type !== 'TemplateProcessing') return null;
  const first = p.single?.[0];
  if (!first || !('SpecialToken' in first)) return null;
  return p.special_tokens?.[first.SpecialToken.id]?.ids?.[0] ?? null;
}
