import { Template } from './jinja.js';
import { parentPort, workerData } from 'node:worker_threads';
import type { EncodeReply, EncodeRequest } from './encode-pool.js';
import { Tokenizer } from './tokenizer.js';

// The texts sent here are the long ones, often refused afterwards for their length in tokens: no word
// cache, so none of them stays in memory. Never offloads again (inlineMaxChars Infinity).
const tokenizer = Tokenizer.load((workerData as { dir: string }).dir, { cacheBytes: 0, inlineMaxChars: Infinity, maxChars: Infinity });

/** Compiled chat templates by their text: a server has one, or a few while CHAT_TEMPLATE changes in tests. */
const templates = new Map<string, Template>();
const compiled = (text: string) => {
  let t = templates.get(text);
  if (!t) {
    if (templates.size >= 4) templates.clear();
    templates.set(text, (t = new Template(text)));
  }
  return t;
};

parentPort!.on('message', (req: EncodeRequest) => {
  let reply: EncodeReply;
  try {
    reply = 'template' in req ? { id: req.id, text: compiled(req.template).render(req.context) } : { id: req.id, ids: Int32Array.from(tokenizer.encodeSync(req.text, { special: req.special })) };
  } catch (e) {
    reply = { id: req.id, error: (e as Error).message };
  }
  parentPort!.postMessage(reply, 'ids' in reply ? [reply.ids.buffer as ArrayBuffer] : []);
});
