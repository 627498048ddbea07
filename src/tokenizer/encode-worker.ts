import { parentPort, workerData } from 'node:worker_threads';
import type { EncodeReply, EncodeRequest } from './encode-pool.js';
import { Tokenizer } from './tokenizer.js';

// The texts sent here are the long ones, often refused afterwards for their length in tokens: no word
// cache, so none of them stays in memory. Never offloads again (inlineMaxChars Infinity).
const tokenizer = Tokenizer.load((workerData as { dir: string }).dir, { cacheBytes: 0, inlineMaxChars: Infinity, maxChars: Infinity });

parentPort!.on('message', ({ id, text, special }: EncodeRequest) => {
  let reply: EncodeReply;
  try {
    reply = { id, ids: Int32Array.from(tokenizer.encodeSync(text, { special })) };
  } catch (e) {
    reply = { id, error: (e as Error).message };
  }
  parentPort!.postMessage(reply, 'ids' in reply ? [reply.ids.buffer as ArrayBuffer] : []);
});
