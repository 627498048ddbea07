import { join } from 'node:path';
import t from 'tap';
import { Tokenizer } from '../../src/tokenizer/bpe.js';
import { TextStream } from '../../src/tokenizer/text-stream.js';
import { reference, ROOT } from '../helpers.js';

const tok = Tokenizer.fromFile(join(ROOT, 'models', 'demo-gpt2', 'tokenizer.json'));

t.test('reproduces every tokenizer case of the reference, and decodes back', async (t) => {
  for (const c of reference.tokenizer) {
    t.same(tok.encode(c.text), c.ids, JSON.stringify(c.text));
    t.equal(tok.decode(c.ids), c.text);
  }
  for (const c of reference.cases) t.same(tok.encode(c.text), c.ids, `case ${JSON.stringify(c.text)}`);
});

t.test('the end-of-text token is matched as a special token', async (t) => {
  t.same(tok.encode('a<|endoftext|>b'), [...tok.encode('a'), 0, ...tok.encode('b')]);
});

t.test('streaming decode emits a multi-byte character only when complete', async (t) => {
  const c = reference.tokenizer.find((x) => x.text.includes('🚀'))!;
  const stream = new TextStream((ids) => tok.bytes(ids));
  const pieces = c.ids.map((id) => stream.push(id));
  pieces.push(stream.flush());
  t.equal(pieces.join(''), c.text);
  for (const p of pieces) t.notOk(p.includes('\uFFFD'), `no replacement character in ${JSON.stringify(p)}`);
  // The rocket takes several byte-level tokens: some pushes must have emitted nothing.
  t.ok(pieces.some((p) => p === ''), 'partial characters were held back');
});
