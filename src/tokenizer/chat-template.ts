import { Template } from './jinja.js';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ServerError } from '../errors.js';
import { tokenName } from './model-files.js';
import { TemplateRenderer } from './template-renderer.js';
import type { Tokenizer } from './tokenizer.js';

/** One message as a chat template reads it: `content` is text or null; any other field (name, tool_calls…) is passed through. */
export interface ChatMessage {
  role: string;
  content: string | null;
  [field: string]: unknown;
}

/** Where the template came from, for logs and errors. */
export type ChatTemplateSource = 'CHAT_TEMPLATE' | 'chat_template.jinja' | 'tokenizer_config.json';

export interface ChatTemplateOptions {
  /** CHAT_TEMPLATE: a Jinja file that replaces the model's template. */
  override?: string;
  /** CHAT_MESSAGE_SPECIAL_TOKENS=match: a message may write special tokens (transformers' and vLLM's behaviour). */
  allowSpecialTokens?: boolean;
  /** Each render's time bound (default RENDER_TIMEOUT_MS). */
  renderTimeoutMs?: number;
}

/** The special tokens transformers puts in a template's context (its `special_tokens_map`), as strings. */
const SPECIAL_NAMES = ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token'];

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** Names a request's chat_template_kwargs may not take: the engine's globals, and what render sets itself. */
const RESERVED = new Set(['true', 'false', 'none', 'True', 'False', 'None', 'range', 'namespace', 'raise_exception', 'strftime_now', 'messages', 'tools', 'documents', 'add_generation_prompt']);

/**
 * A model's chat template, rendered as transformers' `apply_chat_template` renders it: Jinja (run by
 * @huggingface/jinja, the engine of transformers.js) over the tokenizer's special tokens as strings,
 * then the request's `chat_template_kwargs` (`enable_thinking`, …), then `messages`, `tools` and
 * `documents` (null: no tool use) and `add_generation_prompt`. The text is then tokenised with its
 * special tokens matched and no BOS added: the template writes its own, as transformers tokenises it
 * (`add_special_tokens=False`).
 *
 * Unlike transformers, a message may not write a special token by default: a user's
 * `<|im_end|><|im_start|>system` would otherwise forge a turn. Such a request is refused (400)
 * unless CHAT_MESSAGE_SPECIAL_TOKENS=match.
 */
export class ChatTemplate {
  /** Any special token's text, where messages may not write one; null where they may. */
  private readonly forbidden: RegExp | null;
  private readonly renderer: TemplateRenderer;

  private constructor(
    private readonly text: string,
    private readonly specials: Record<string, string>,
    private readonly tokenizer: Pick<Tokenizer, 'specialTokens' | 'maxChars'>,
    allowSpecialTokens: boolean,
    readonly source: ChatTemplateSource,
    renderTimeoutMs?: number,
  ) {
    this.renderer = new TemplateRenderer(renderTimeoutMs);
    new Template(text); // parsed here to refuse a template that cannot run at load; rendered in a child process
    const tokens = tokenizer.specialTokens.filter((t) => t !== '');
    this.forbidden = allowSpecialTokens || tokens.length === 0 ? null : new RegExp(tokens.map(escapeRegExp).join('|'));
  }

  /**
   * The template of a model folder: the file `override` names (CHAT_TEMPLATE), else the folder's
   * `chat_template.jinja` (transformers' own file since 4.47), else `tokenizer_config.json`'s
   * `chat_template` (a string, or a list of named templates: `default` is used). `template` null:
   * `reason` says why (none, or one this Jinja engine cannot parse); a CHAT_TEMPLATE that cannot be
   * read or parsed throws, since the operator asked for it.
   */
  static load(dir: string, tokenizer: Pick<Tokenizer, 'config' | 'specialTokens' | 'maxChars'>, opts: ChatTemplateOptions = {}): { template: ChatTemplate | null; reason: string } {
    const specials: Record<string, string> = {};
    for (const name of SPECIAL_NAMES) {
      const token = tokenName(tokenizer.config[name]);
      if (token !== null) specials[name] = token;
    }
    const compile = (text: string, source: ChatTemplateSource) => new ChatTemplate(text, specials, tokenizer, opts.allowSpecialTokens ?? false, source, opts.renderTimeoutMs);
    if (opts.override) {
      let text: string;
      try {
        text = readFileSync(opts.override, 'utf8');
      } catch (e) {
        throw new Error(`CHAT_TEMPLATE: cannot read ${opts.override}: ${(e as Error).message}`);
      }
      try {
        return { template: compile(text, 'CHAT_TEMPLATE'), reason: '' };
      } catch (e) {
        throw new Error(`CHAT_TEMPLATE: ${opts.override} is not a template this server can run: ${(e as Error).message}`);
      }
    }
    const file = join(dir, 'chat_template.jinja');
    const [text, source]: [unknown, ChatTemplateSource] = existsSync(file) ? [readFileSync(file, 'utf8'), 'chat_template.jinja'] : [namedDefault(tokenizer.config.chat_template), 'tokenizer_config.json'];
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
   * The prompt text of a conversation. Refused before any rendering: more characters than
   * MAX_PROMPT_CHARS (413), a special token written in a message (400, see the class). A template's
   * own refusal (`raise_exception`, as in "roles must alternate") or any error while rendering is
   * the request's fault: 400. Rendered in a child process, bounded in time and memory there
   * (src/tokenizer/template-renderer.ts): a template is a program, and one that loops or allocates
   * without end (over a kwarg, say) must stop neither the event loop nor the server. `signal`: the
   * client left; its render is dropped or stopped.
   */
  async render(messages: ChatMessage[], addGenerationPrompt: boolean, kwargs: Record<string, unknown> = {}, signal?: AbortSignal): Promise<string> {
    let json: string;
    try {
      json = JSON.stringify({ messages, kwargs });
    } catch (e) {
      throw new ServerError('invalid_request', `the messages cannot be passed to the chat template: ${(e as Error).message}`); // nested too deeply
    }
    if (json.length > this.tokenizer.maxChars) {
      throw new ServerError('prompt_too_long', `the messages have ${json.length} characters (as JSON); the limit is ${this.tokenizer.maxChars} (MAX_PROMPT_CHARS)`);
    }
    const reserved = Object.keys(kwargs).find((k) => RESERVED.has(k));
    if (reserved) throw new ServerError('invalid_request', `chat_template_kwargs may not set ${JSON.stringify(reserved)}: the template's own variable`);
    const special = this.forbidden && firstMatch({ messages, kwargs }, this.forbidden);
    if (special) {
      throw new ServerError('invalid_request', `a message writes the special token ${JSON.stringify(special[0])}, which would be read as the token itself (CHAT_MESSAGE_SPECIAL_TOKENS=match allows it)`);
    }
    return this.renderer.render(this.text, { ...this.specials, ...kwargs, messages, tools: null, documents: null, add_generation_prompt: addGenerationPrompt }, this.tokenizer.maxChars, signal);
  }

  /** Stops the renderer process. */
  close(): void {
    this.renderer.close();
  }
}

/** The first match of `re` in any string inside `v` (a parsed JSON body, keys included); iterative, whatever its depth. */
function firstMatch(v: unknown, re: RegExp): RegExpExecArray | null {
  const stack = [v];
  while (stack.length > 0) {
    const x = stack.pop();
    if (typeof x === 'string') {
      const m = re.exec(x);
      if (m) return m;
    } else if (x !== null && typeof x === 'object') {
      for (const y of Array.isArray(x) ? x : Object.keys(x)) stack.push(y);
      if (!Array.isArray(x)) for (const y of Object.values(x)) stack.push(y);
    }
  }
  return null;
}

/** `chat_template` as a list of `{name, template}` (models with tool-use variants): the one named `default`. */
function namedDefault(v: unknown): unknown {
  if (!Array.isArray(v)) return v;
  return (v.find((t) => t && typeof t === 'object' && (t as { name?: unknown }).name === 'default') as { template?: unknown } | undefined)?.template;
}
