import { Template } from '@huggingface/jinja';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ServerError } from '../errors.js';
import { tokenName } from './model-files.js';

/** One message as a chat template reads it: `content` is text; any other field (name, tool_calls…) is passed through. */
export interface ChatMessage {
  role: string;
  content: string;
  [field: string]: unknown;
}

/** Where the template came from, for logs and errors. */
export type ChatTemplateSource = 'CHAT_TEMPLATE' | 'chat_template.jinja' | 'tokenizer_config.json';

/** The special tokens transformers puts in a template's context (its `special_tokens_map`), as strings. */
const SPECIAL_NAMES = ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token'];

/**
 * A model's chat template, rendered as transformers' `apply_chat_template` renders it: Jinja (run by
 * @huggingface/jinja, the engine of transformers.js) over `messages`, `add_generation_prompt` and the
 * tokenizer's special tokens as strings, plus any `chat_template_kwargs` a request passes
 * (`enable_thinking`, …). The text is then tokenised with its special tokens matched and no BOS
 * added: the template writes its own, as transformers tokenises it (`add_special_tokens=False`).
 */
export class ChatTemplate {
  private constructor(
    private readonly template: Template,
    private readonly specials: Record<string, string>,
    readonly source: ChatTemplateSource,
  ) {}

  /**
   * The template of a model folder: the file `override` names (CHAT_TEMPLATE), else the folder's
   * `chat_template.jinja` (transformers' own file since 4.47), else `tokenizer_config.json`'s
   * `chat_template` (a string, or a list of named templates: `default` is used). `template` null:
   * `reason` says why (none, or one this Jinja engine cannot parse); a CHAT_TEMPLATE that cannot be
   * read or parsed throws, since the operator asked for it.
   */
  static load(dir: string, tokenizerConfig: Record<string, unknown>, override?: string): { template: ChatTemplate | null; reason: string } {
    const specials: Record<string, string> = {};
    for (const name of SPECIAL_NAMES) {
      const token = tokenName(tokenizerConfig[name]);
      if (token !== null) specials[name] = token;
    }
    const compile = (text: string, source: ChatTemplateSource) => new ChatTemplate(new Template(text), specials, source);
    if (override) {
      let text: string;
      try {
        text = readFileSync(override, 'utf8');
      } catch (e) {
        throw new Error(`CHAT_TEMPLATE: cannot read ${override}: ${(e as Error).message}`);
      }
      try {
        return { template: compile(text, 'CHAT_TEMPLATE'), reason: '' };
      } catch (e) {
        throw new Error(`CHAT_TEMPLATE: ${override} is not a template this server can run: ${(e as Error).message}`);
      }
    }
    const file = join(dir, 'chat_template.jinja');
    const [text, source]: [unknown, ChatTemplateSource] = existsSync(file) ? [readFileSync(file, 'utf8'), 'chat_template.jinja'] : [namedDefault(tokenizerConfig.chat_template), 'tokenizer_config.json'];
    if (typeof text !== 'string' || text === '') {
      return { template: null, reason: 'the model has no chat template (chat_template.jinja, or chat_template in tokenizer_config.json); set CHAT_TEMPLATE to a Jinja file, or use /v1/completions' };
    }
    try {
      return { template: compile(text, source), reason: '' };
    } catch (e) {
      return { template: null, reason: `the model's chat template (${source}) cannot be parsed: ${(e as Error).message}; set CHAT_TEMPLATE to a Jinja file, or use /v1/completions` };
    }
  }

  /**
   * The prompt text of a conversation. A template's own refusal (`raise_exception`, as in "roles
   * must alternate user/assistant") or any error while rendering is the request's fault: 400.
   */
  render(messages: ChatMessage[], addGenerationPrompt: boolean, kwargs: Record<string, unknown> = {}): string {
    try {
      return this.template.render({ ...kwargs, ...this.specials, messages, add_generation_prompt: addGenerationPrompt });
    } catch (e) {
      throw new ServerError('invalid_request', `the chat template refused the messages: ${(e as Error).message}`);
    }
  }
}

/** `chat_template` as a list of `{name, template}` (models with tool-use variants): the one named `default`. */
function namedDefault(v: unknown): unknown {
  if (!Array.isArray(v)) return v;
  return (v.find((t) => t && typeof t === 'object' && (t as { name?: unknown }).name === 'default') as { template?: unknown } | undefined)?.template;
}
