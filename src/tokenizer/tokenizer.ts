import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { LruCache } from '../adapters/lru.js';
import { MAX_LABEL_CHARS } from '../adapters/task-spec.js';
import { FormatError, ServerError } from '../errors.js';
import { EncodePool } from './encode-pool.js';
import { readTokenizerFiles, templateBosId, tokenName, type TokenizerFiles } from './model-files.js';
import { StreamDecoder } from './stream-decoder.js';

export interface EncodeOptions {
  /** Match special tokens (`<|endoftext|>`, `<s>`…) written in the text. Off for user text. */
  special?: boolean;
  /** Put the model's BOS token first where its tokenizer adds one (`add_bos_token`). */
  addBos?: boolean;
}

export interface TokenizerOptions {
  /** Texts longer than this are refused (413 `prompt_too_long`) before any tokenization. */
  maxChars?: number;
  /** Byte budget of the BPE word cache; 0 disables it. */
  cacheBytes?: number;
  /** Texts longer than this are encoded in a worker thread, off the event loop; Infinity: never. */
  inlineMaxChars?: number;
}

export const DEFAULT_MAX_CHARS = 100_000;
const DEFAULT_CACHE_BYTES = 8 * 1024 * 1024;
/**
 * The library encodes about 0.3 M characters/s on the demo vocabulary (bench/tokenizer.ts) and a
 * long run of spaces is its slowest input (about 20 µs a character): up to 512 characters stays
 * on the event loop (~2 ms typical, ~10 ms worst), longer texts go to the worker.
 */
const DEFAULT_INLINE_MAX_CHARS = 512;

/** The parts of @huggingface/tokenizers' Tokenizer this class relies on beyond its typed API. */
interface LibraryInternals {
  added_tokens: { content: string; id: number; special: boolean; normalized: boolean }[];
  added_tokens_map: Map<string, unknown>;
  splitter_unnormalized: object;
  splitter_normalized: object;
  normalizer: ((text: string) => string) | null;
  model: { vocab: (string | undefined)[]; cache?: unknown };
}

/** The library's BPE word cache, bounded in bytes (the library's own is bounded in entries only). */
function wordCache(bytes: number) {
  const lru = new LruCache<string, string[]>(bytes);
  return {
    lru,
    get: (word: string) => lru.get(word),
    // UTF-16 strings: 2 bytes a character, plus about 40 bytes of overhead per string and array.
    put: (word: string, pieces: string[]) => {
      if (bytes > 0) lru.set(word, pieces, 80 + 2 * word.length + pieces.reduce((n, p) => n + 40 + 2 * p.length, 0));
    },
  };
}

/**
 * A Hugging Face `tokenizer.json` (byte-level BPE with Split regexes, SentencePiece-style BPE with
 * byte fallback, added and special tokens) run by @huggingface/tokenizers, with the server's rules
 * around it: bounded input, large texts off the event loop, special tokens only when asked, BOS and
 * EOS ids from the checkpoint's config files, and exact streaming detokenization.
 */
export class Tokenizer {
  readonly vocabSize: number;
  /** The id to put first when encoding a prompt (`add_bos_token`), or null. */
  readonly bosTokenId: number | null;
  /** Generation stops on any of these (config.json, generation_config.json, tokenizer_config.json). */
  readonly eosTokenIds: number[];
  /** The first of `eosTokenIds`, for callers that need one. */
  readonly eosTokenId: number;
  readonly maxChars: number;
  /** `tokenizer_config.json` (`{}` where the folder has none): special token names, the chat template. */
  readonly config: Record<string, unknown>;
  /** The texts of the special added tokens (`<|endoftext|>`, `<|im_start|>`…). */
  readonly specialTokens: string[];
  private readonly full: HfTokenizer;
  /** The same tokenizer with special tokens unregistered: user text never produces them. */
  private readonly plain: HfTokenizer;
  private readonly cache: ReturnType<typeof wordCache>;
  private readonly inlineMaxChars: number;
  private pool: EncodePool | null = null;
  /** An ordinary token, decoded before another so that the other keeps its leading space. */
  private readonly anchor: number[];
  /** The decoder maps characters to bytes (ByteLevel): see tokenBytes. */
  private readonly byteLevel: boolean;
  /** continuation()'s results by context tail and text. */
  private readonly continuations = new LruCache<string, number[]>(CONTINUATION_CACHE_BYTES);
  /** tokenText's answers by id. */
  private readonly tokenTexts = new Map<number, string>();

  constructor(
    private readonly dir: string,
    files: TokenizerFiles,
    opts: TokenizerOptions = {},
  ) {
    this.config = files.tokenizerConfig;
    const type = files.tokenizer.model?.type;
    if (type !== 'BPE') throw new FormatError('unsupported_tokenizer', `unsupported tokenizer: model type '${String(type)}' (supported: BPE)`);
    try {
      this.full = new HfTokenizer(files.tokenizer, files.tokenizerConfig);
    } catch (e) {
      throw new FormatError('unsupported_tokenizer', `unsupported tokenizer.json: ${(e as Error).message}`);
    }
    this.plain = withoutSpecialTokens(this.full);
    const lib = this.full as unknown as LibraryInternals;
    this.cache = wordCache(opts.cacheBytes ?? DEFAULT_CACHE_BYTES);
    lib.model.cache = this.cache;
    this.vocabSize = lib.model.vocab.length;
    this.maxChars = opts.maxChars ?? DEFAULT_MAX_CHARS;
    this.inlineMaxChars = opts.inlineMaxChars ?? DEFAULT_INLINE_MAX_CHARS;
    const idOf = (name: string | null) => (name === null ? undefined : this.full.token_to_id(name));
    this.bosTokenId = bosToPrepend(files, idOf);
    const eos = idOf(tokenName(files.tokenizerConfig.eos_token));
    this.eosTokenIds = [...new Set([...files.eosTokenIds, ...(eos === undefined ? [] : [eos])])];
    if (this.eosTokenIds.length === 0) throw new FormatError('invalid_tokenizer', 'no end-of-sequence token: config.json, generation_config.json and tokenizer_config.json name none');
    this.eosTokenId = this.eosTokenIds[0];
    this.anchor = this.plain.encode('a', { add_special_tokens: false }).ids.slice(0, 1);
    this.specialTokens = (files.tokenizer.added_tokens ?? []).filter((t) => t.special).map((t) => t.content);
    this.byteLevel = JSON.stringify(files.tokenizer.decoder ?? null).includes('"ByteLevel"');
  }

  static load(dir: string, opts: TokenizerOptions = {}): Tokenizer {
    return new Tokenizer(dir, readTokenizerFiles(dir), opts);
  }

  /** Refuses a text over the character bound: called before any tokenization work. */
  private check(text: string): void {
    if (text.length > this.maxChars) {
      throw new ServerError('prompt_too_long', `the text has ${text.length} characters; the limit is ${this.maxChars} (MAX_PROMPT_CHARS)`);
    }
  }

  /** Token ids of `text`; a long text is encoded in a worker thread so the event loop stays free. */
  async encode(text: string, opts: EncodeOptions = {}): Promise<number[]> {
    this.check(text);
    if (text.length <= this.inlineMaxChars) return this.encodeSync(text, opts);
    this.pool ??= new EncodePool(this.dir);
    const ids = await this.pool.encode(text, opts.special ?? false);
    return this.withBos(ids, opts);
  }

  /** The same ids, computed on the calling thread (the worker, tests and benchmarks use it). */
  encodeSync(text: string, opts: EncodeOptions = {}): number[] {
    this.check(text);
    const ids = (opts.special ? this.full : this.plain).encode(text, { add_special_tokens: false }).ids;
    return this.withBos(ids, opts);
  }

  /**
   * Ids of `text` as it continues `context`: the ids of tail + text after the tail's own, where
   * those are their prefix; `tail` is the context's end from a whitespace boundary (at most
   * TAIL_CHARS): what decides how `text` starts (equal to the whole context's ids on four real
   * tokenizers, test/tokenizer/real-tokenizers.test.ts). Encoded alone, a SentencePiece
   * tokenizer starts `text` as a new word, so " world" after "Hello" became ["▁", "▁world"], a
   * double space, where "Hello world" has ["▁world"]. Where a token spans the boundary (the tail's
   * ids are not a prefix), `text` is encoded alone. Short texts (labels) are kept in a bounded
   * cache: a classify asks for every input and label, and its inputs mostly share a template's end.
   */
  async continuation(context: string, text: string): Promise<number[]> {
    const tail = contextTail(context);
    const key = text.length <= MAX_LABEL_CHARS ? `${tail}\u0000${text}` : null;
    const hit = key === null ? undefined : this.continuations.get(key);
    if (hit) return [...hit]; // a copy: callers append to it (score's end-of-text)
    const tailIds = this.encodeSync(tail);
    const whole = await this.encode(tail + text);
    const ids = whole.length > tailIds.length && tailIds.every((id, i) => whole[i] === id) ? whole.slice(tailIds.length) : await this.encode(text);
    if (key !== null) this.continuations.set(key, [...ids], 2 * key.length + 8 * ids.length + 64);
    return ids;
  }

  private withBos(ids: number[], opts: EncodeOptions): number[] {
    return opts.addBos && this.bosTokenId !== null ? [this.bosTokenId, ...ids] : ids;
  }

  /** The text of `ids`, exactly as the tokenizer's decoder gives it (no clean-up of spaces). */
  decode(ids: readonly number[]): string {
    const known = ids.filter((id) => this.full.id_to_token(id) !== undefined);
    return known.length ? this.full.decode(known, { clean_up_tokenization_spaces: false }) : '';
  }

  /**
   * One token's bytes as the decoder gives them: a byte-fallback token (`<0xE2>`) its byte, a
   * ByteLevel token (GPT-2, Llama 3, Qwen) its characters through GPT-2's byte table, any other
   * the UTF-8 of its text. OpenAI's logprobs name a token that is not whole characters by them.
   */
  tokenBytes(id: number): number[] {
    const token = this.full.id_to_token(id) ?? '';
    const hex = /^<0x([0-9A-Fa-f]{2})>$/.exec(token);
    if (hex) return [parseInt(hex[1], 16)];
    if (this.byteLevel) {
      const bytes = [...token].map((ch) => BYTE_OF_CHAR.get(ch));
      if (bytes.every((b) => b !== undefined)) return bytes as number[];
    }
    return [...new TextEncoder().encode(this.tokenText(id))];
  }

  /**
   * One token's text as it reads after other text (SentencePiece keeps its leading space), for
   * logprobs. Memoised: a logprobs response asks it for every token and alternative, and each
   * answer costs two decodes; at most one entry per vocabulary id.
   */
  tokenText(id: number): string {
    let text = this.tokenTexts.get(id);
    if (text === undefined) {
      text = this.decode([...this.anchor, id]).slice(this.decode(this.anchor).length);
      if (this.full.id_to_token(id) !== undefined) this.tokenTexts.set(id, text);
    }
    return text;
  }

  /** A streaming decoder for generated ids; `context` (the prompt's ids) decides leading spaces. */
  stream(context: readonly number[] = []): StreamDecoder {
    return new StreamDecoder((ids) => this.decode(ids), context);
  }

  /** Bytes held by the word cache (bounded by `cacheBytes`). */
  get cacheBytes(): number {
    return this.cache.lru.bytes;
  }

  /** Stops the encode worker, if one was started. */
  async close(): Promise<void> {
    await this.pool?.close();
    this.pool = null;
  }
}

/**
 * `add_bos_token` from `tokenizer_config.json` decides; without it, the post-processor's template
 * does (what a Hugging Face fast tokenizer adds with `add_special_tokens`).
 */
function bosToPrepend(files: TokenizerFiles, idOf: (name: string | null) => number | undefined): number | null {
  const add = files.tokenizerConfig.add_bos_token;
  if (add === false) return null;
  if (add === true) {
    const id = idOf(tokenName(files.tokenizerConfig.bos_token)) ?? files.bosTokenId;
    if (id === null) throw new FormatError('invalid_tokenizer', 'add_bos_token is true but no BOS token is named (bos_token, bos_token_id)');
    return id;
  }
  return templateBosId(files.tokenizer.post_processor);
}

/**
 * A view of the library tokenizer that shares its vocabulary, model and caches but knows only the
 * non-special added tokens: special-token strings in user text are tokenized as ordinary text
 * (what Hugging Face calls `split_special_tokens`).
 */
function withoutSpecialTokens(full: HfTokenizer): HfTokenizer {
  const lib = full as unknown as LibraryInternals;
  const Splitter = lib.splitter_unnormalized.constructor as new (words: string[]) => object;
  const map = new Map<string, unknown>();
  const unnormalized: string[] = [];
  const normalized: string[] = [];
  for (const t of lib.added_tokens) {
    if (t.special) continue;
    map.set(t.content, t);
    if (t.normalized && lib.normalizer) {
      const n = lib.normalizer(t.content);
      normalized.push(n);
      map.set(n, t);
    } else unnormalized.push(t.content);
  }
  return Object.assign(Object.create(full) as HfTokenizer, {
    added_tokens_map: map,
    splitter_unnormalized: new Splitter(unnormalized),
    splitter_normalized: new Splitter(normalized),
  });
}

/** GPT-2's bytes_to_unicode, inverted: the character a ByteLevel vocabulary writes for each byte, back to the byte. */
const BYTE_OF_CHAR: Map<string, number> = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const map = new Map<string, number>();
  let n = 0;
  for (let b = 0; b < 256; b++) map.set(String.fromCharCode(printable(b) ? b : 256 + n++), b);
  return map;
})();

/** How much of a context's end continuation() looks at, and what its cache may hold. */
const TAIL_CHARS = 64;
const CONTINUATION_CACHE_BYTES = 4 * 1024 * 1024;

/** The context's last characters from a whitespace boundary: at most TAIL_CHARS, all of it when shorter. */
function contextTail(context: string): string {
  if (context.length <= TAIL_CHARS) return context;
  const end = context.slice(-TAIL_CHARS);
  const cut = end.search(/\s/);
  return cut > 0 ? end.slice(cut) : end;
}
