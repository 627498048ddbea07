import { readFileSync } from 'node:fs';
import { FormatError } from '../errors.js';

// GPT-2's pre-tokenizer split (ByteLevel with use_regex), as in Hugging Face tokenizers.
const SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** GPT-2's reversible map from bytes to printable characters. */
function byteToUnicode(): string[] {
  const keep: number[] = [];
  for (let b = 33; b <= 126; b++) keep.push(b);
  for (let b = 161; b <= 172; b++) keep.push(b);
  for (let b = 174; b <= 255; b++) keep.push(b);
  const map: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) map[b] = String.fromCodePoint(keep.includes(b) ? b : 256 + extra++);
  return map;
}

interface TokenizerJson {
  model: { type: string; vocab: Record<string, number>; merges: (string | [string, string])[] };
  added_tokens?: { id: number; content: string; special: boolean }[];
  pre_tokenizer?: { type?: string; add_prefix_space?: boolean };
}

/** Byte-level BPE exactly as `tokenizer.json` describes it (GPT-2 family). */
export class Tokenizer {
  private readonly vocab: Map<string, number>;
  private readonly tokenBytes: Uint8Array[];
  private readonly ranks: Map<string, number>;
  private readonly byteChar = byteToUnicode();
  private readonly special: { content: string; id: number }[];
  private readonly cache = new Map<string, number[]>();
  readonly vocabSize: number;

  constructor(json: TokenizerJson) {
    if (json.model?.type !== 'BPE') throw new FormatError('unsupported_tokenizer', `tokenizer model ${json.model?.type} is not BPE`);
    if (json.pre_tokenizer?.type !== 'ByteLevel' || json.pre_tokenizer.add_prefix_space) {
      throw new FormatError('unsupported_tokenizer', 'only a ByteLevel pre-tokenizer without prefix space is supported');
    }
    this.vocab = new Map(Object.entries(json.model.vocab));
    this.ranks = new Map(json.model.merges.map((m, i) => [Array.isArray(m) ? m.join(' ') : m, i]));
    this.special = (json.added_tokens ?? []).map((t) => ({ content: t.content, id: t.id }));
    for (const t of this.special) this.vocab.set(t.content, t.id);
    this.vocabSize = Math.max(...this.vocab.values()) + 1;
    const charByte = new Map(this.byteChar.map((c, b) => [c, b]));
    const specialIds = new Set(this.special.map((t) => t.id));
    this.tokenBytes = new Array(this.vocabSize).fill(new Uint8Array(0));
    for (const [token, id] of this.vocab) {
      this.tokenBytes[id] = specialIds.has(id)
        ? new TextEncoder().encode(token)
        : Uint8Array.from([...token].map((c) => charByte.get(c) ?? 0));
    }
  }

  static fromFile(path: string): Tokenizer {
    return new Tokenizer(JSON.parse(readFileSync(path, 'utf8')));
  }

  encode(text: string): number[] {
    const ids: number[] = [];
    for (const piece of this.splitSpecial(text)) {
      if (typeof piece === 'number') ids.push(piece);
      else for (const word of piece.match(SPLIT) ?? []) ids.push(...this.encodeWord(word));
    }
    return ids;
  }

  /** Bytes of the tokens; text is made from bytes so a character split across tokens is never broken. */
  bytes(ids: readonly number[]): Uint8Array {
    const parts = ids.map((id) => this.tokenBytes[id] ?? new Uint8Array(0));
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  decode(ids: readonly number[]): string {
    return new TextDecoder().decode(this.bytes(ids));
  }

  private splitSpecial(text: string): (string | number)[] {
    const out: (string | number)[] = [];
    let rest = text;
    while (rest.length > 0) {
      let best: { at: number; tok: { content: string; id: number } } | null = null;
      for (const tok of this.special) {
        const at = rest.indexOf(tok.content);
        if (at >= 0 && (best === null || at < best.at)) best = { at, tok };
      }
      if (!best) {
        out.push(rest);
        break;
      }
      if (best.at > 0) out.push(rest.slice(0, best.at));
      out.push(best.tok.id);
      rest = rest.slice(best.at + best.tok.content.length);
    }
    return out;
  }

  private encodeWord(word: string): number[] {
    const hit = this.cache.get(word);
    if (hit) return hit;
    let parts = [...new TextEncoder().encode(word)].map((b) => this.byteChar[b]);
    while (parts.length > 1) {
      let bestRank = Infinity;
      let bestAt = -1;
      for (let i = 0; i < parts.length - 1; i++) {
        const rank = this.ranks.get(parts[i] + ' ' + parts[i + 1]);
        if (rank !== undefined && rank < bestRank) {
          bestRank = rank;
          bestAt = i;
        }
      }
      if (bestAt < 0) break;
      const [a, b] = [parts[bestAt], parts[bestAt + 1]];
      const next: string[] = [];
      for (let i = 0; i < parts.length; i++) {
        if (parts[i] === a && parts[i + 1] === b) {
          next.push(a + b);
          i++;
        } else next.push(parts[i]);
      }
      parts = next;
    }
    const ids = parts.map((p) => {
      const id = this.vocab.get(p);
      if (id === undefined) throw new FormatError('unknown_token', `BPE produced '${p}', which is not in the vocabulary`);
      return id;
    });
    if (this.cache.size < 50_000) this.cache.set(word, ids);
    return ids;
  }
}
