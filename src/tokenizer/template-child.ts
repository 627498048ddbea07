import vm from 'node:vm';
import { Template } from './jinja.js';

/**
 * The chat-template renderer's child process (src/tokenizer/template-renderer.ts): renders one
 * template at a time and answers with the text, its length where that is over the request's limit
 * (so that a huge text never crosses back), the template's error (cut short: a template can raise
 * one of any size), or that it ran out of time. The time bound interrupts the render itself (V8
 * terminates the script run through `vm`), so this process outlives it; and it exits with its
 * server, whose channel closes.
 */
export interface RenderRequest {
  template: string;
  context: Record<string, unknown>;
  maxChars: number;
  timeoutMs: number;
}
export type RenderReply = { text: string } | { tooLong: number } | { error: string } | { timedOut: true };

/** An error's message beyond this is cut: it goes into a 400's body. */
const MAX_ERROR_CHARS = 1000;
/** Compiled templates by their text: a server has one, or a few where tests change CHAT_TEMPLATE. */
const templates = new Map<string, Template>();
/** One context and script for every render (a new context each time cost 0.6 ms): the script calls `render` set just before. */
const sandbox = vm.createContext({ render: () => '' });
const script = new vm.Script('render()');

process.on('message', (req: RenderRequest) => {
  let reply: RenderReply;
  try {
    let t = templates.get(req.template);
    if (!t) {
      if (templates.size >= 4) templates.clear();
      templates.set(req.template, (t = new Template(req.template)));
    }
    const template = t;
    sandbox.render = () => template.render(req.context);
    const text = script.runInContext(sandbox, { timeout: req.timeoutMs }) as string;
    reply = text.length > req.maxChars ? { tooLong: text.length } : { text };
  } catch (e) {
    const err = e as Error & { code?: string };
    reply = err.code === 'ERR_SCRIPT_EXECUTION_TIMEOUT' ? { timedOut: true } : { error: String(err.message).slice(0, MAX_ERROR_CHARS) };
  }
  process.send!(reply);
});
// The server is gone (its channel closed): exit, once a render in progress is over (within its time bound).
process.on('disconnect', () => process.exit(0));
