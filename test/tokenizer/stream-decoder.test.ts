import { join } from 'node:path';
import t from 'tap';
import { StreamDecoder } from '../../src/tokenizer/stream-decoder.js';
import { Tokenizer } from '../../src/tokenizer/tokenizer.js';
import { reference, ROOT } from '../helpers.js';

const gpt2 = Tokenizer.load(join(ROOT, 'models', 'demo-gpt2'));
const llama2 = Tokenizer.load(join(ROOT, 'node_modules', '@lenml', 'tokenizer-llama2', 'models'));
const run = (s: StreamDecoder, ids: number[]) => [...ids.map((id) => s.push(id)), s.flush()];

t.test('a multi-byte character is emitted only when complete (byte-level BPE)', async (t) => {
  const c = reference.tokenizer.find((x) => x.text.includes('🚀'))!;
  const pieces = run(gpt2.stream(), c.ids);
  t.equal(pieces.join(''), c.text);
  for (const p of pieces) t.notOk(p.includes('\uFFFD'), `no replacement character in ${JSON.stringify(p)}`);
  t.ok(pieces.some((p) => p === ''), 'partial characters were held back');
});

t.test('SentencePiece: byte fallback held back until complete, leading space by context', async (t) => {
  const ids = llama2.encodeSync('a 🧬 b');
  const pieces = run(llama2.stream(), ids);
  t.equal(pieces.join(''), llama2.decode(ids));
  t.ok(ids.length >= 4 + 2, 'the emoji takes four byte-fallback tokens');
  for (const p of pieces) t.notOk(p.includes('\uFFFD'), `no replacement character in ${JSON.stringify(p)}`);
  // Alone, a text's first token loses its leading space; after a prompt it keeps it.
  const [hello] = llama2.encodeSync('Hello');
  t.equal(run(llama2.stream(), [hello]).join(''), 'Hello');
  t.equal(run(llama2.stream(llama2.encodeSync('Say')), [hello]).join(''), ' Hello');
});

t.test('invalid bytes come out as U+FFFD exactly where the full decode has them', async (t) => {
  // Byte-level tokens of a lone continuation byte and of a truncated 3-byte sequence, between letters.
  const [rocket] = [gpt2.encodeSync('🚀')];
  const ids = [...gpt2.encodeSync('a'), rocket[rocket.length - 1], ...gpt2.encodeSync('b'), rocket[0], ...gpt2.encodeSync('c')];
  t.equal(run(gpt2.stream(), ids).join(''), gpt2.decode(ids));
  t.equal(run(gpt2.stream(), rocket.slice(0, -1)).join(''), gpt2.decode(rocket.slice(0, -1)), 'an incomplete end flushes as the full decode does');
});

t.test('memory stays bounded: ids before the window are dropped', async (t) => {
  const s = gpt2.stream();
  const id = gpt2.encodeSync(' word')[0];
  for (let i = 0; i < 10_000; i++) s.push(id);
  t.ok((s as unknown as { ids: number[] }).ids.length <= 4, 'window of a few ids');
});
