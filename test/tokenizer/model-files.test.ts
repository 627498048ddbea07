import { copyFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { readTokenizerFiles, templateBosId } from '../../src/tokenizer/model-files.js';
import { Tokenizer } from '../../src/tokenizer/tokenizer.js';
import { ROOT } from '../helpers.js';

/** A model folder with the demo tokenizer.json and the given config files. */
function folder(files: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), 'sps-tok-'));
  copyFileSync(join(ROOT, 'models', 'demo-gpt2', 'tokenizer.json'), join(dir, 'tokenizer.json'));
  for (const [name, v] of Object.entries(files)) writeFileSync(join(dir, name), JSON.stringify(v));
  return dir;
}

t.test('eos_token_id may be a list; generation_config and tokenizer_config add theirs', async (t) => {
  const dir = folder({
    'config.json': { eos_token_id: [5, 7] },
    'generation_config.json': { eos_token_id: [7, 9] },
    'tokenizer_config.json': { eos_token: '<|endoftext|>' },
  });
  t.same(readTokenizerFiles(dir).eosTokenIds, [5, 7, 9]);
  const tok = Tokenizer.load(dir);
  t.same(tok.eosTokenIds, [5, 7, 9, 0]);
  t.equal(tok.eosTokenId, 5, 'the first, for callers that need one');
});

t.test('add_bos_token decides the BOS to prepend; without it, the post-processor template does', async (t) => {
  const on = Tokenizer.load(folder({ 'config.json': { eos_token_id: 0 }, 'tokenizer_config.json': { add_bos_token: true, bos_token: { content: '<|endoftext|>' } } }));
  t.equal(on.bosTokenId, 0);
  t.same(on.encodeSync('a', { addBos: true }), [0, ...on.encodeSync('a')]);
  const fromConfig = Tokenizer.load(folder({ 'config.json': { eos_token_id: 0, bos_token_id: 3 }, 'tokenizer_config.json': { add_bos_token: true } }));
  t.equal(fromConfig.bosTokenId, 3, "config.json's bos_token_id where tokenizer_config names none");
  const off = Tokenizer.load(folder({ 'config.json': { eos_token_id: 0 }, 'tokenizer_config.json': { add_bos_token: false } }));
  t.equal(off.bosTokenId, null);
  t.same(off.encodeSync('a', { addBos: true }), off.encodeSync('a'));
  const template = { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<s>' } }, { Sequence: { id: 'A' } }], special_tokens: { '<s>': { ids: [1] } } };
  t.equal(templateBosId(template), 1);
  t.equal(templateBosId({ type: 'Sequence', processors: [{ type: 'ByteLevel' }, template] }), 1, 'inside a Sequence (Llama 3.1)');
  t.equal(templateBosId({ type: 'ByteLevel' }), null);
});

t.test('refused: a tokenizer that is not BPE, a missing EOS, invalid JSON', async (t) => {
  const dir = folder({ 'config.json': { eos_token_id: 0 } });
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify({ model: { type: 'WordPiece', vocab: {} }, added_tokens: [] }));
  t.throws(() => Tokenizer.load(dir), { code: 'unsupported_tokenizer', message: /model type 'WordPiece' \(supported: BPE\)/ });
  t.throws(() => Tokenizer.load(folder({})), { code: 'invalid_tokenizer', message: /no end-of-sequence token/ });
  const bad = folder({});
  writeFileSync(join(bad, 'config.json'), '{');
  t.throws(() => Tokenizer.load(bad), { code: 'invalid_tokenizer', message: /config.json is not valid JSON/ });
});
