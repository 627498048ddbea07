import { Template } from './jinja.js';

/**
 * The chat-template renderer's child process (src/tokenizer/template-renderer.ts): renders one
 * template at a time and answers with the text, the template's error, or the text's length where
 * it is over the request's limit (so that a huge text never crosses back to the server).
 */
export interface RenderRequest {
  template: string;
  context: Record<string, unknown>;
  maxChars: number;
}
export type RenderReply = { text: string } | { error: string } | { tooLong: number };

/** Compiled templates by their text: a server has one, or a few where tests change CHAT_TEMPLATE. */
const templates = new Map<string, Template>();

process.on('message', (req: RenderRequest) => {
  let reply: RenderReply;
  try {
    let t = templates.get(req.template);
    if (!t) {
      if (templates.size >= 4) templates.clear();
      templates.set(req.template, (t = new Template(req.template)));
    }
    const text = t.render(req.context);
    reply = text.length > req.maxChars ? { tooLong: text.length } : { text };
  } catch (e) {
    reply = { error: (e as Error).message };
  }
  process.send!(reply);
});
