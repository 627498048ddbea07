import { workerData } from 'node:worker_threads';
import { serveRpc } from '../worker-rpc.js';
import type { EncodeRequest } from './encode-pool.js';
import { Tokenizer } from './tokenizer.js';

// The texts sent here are the long ones, often refused afterwards for their length in tokens: no word
// cache, so none of them stays in memory. Never offloads again (inlineMaxChars Infinity).
const tokenizer = Tokenizer.load((workerData as { dir: string }).dir, { cacheBytes: 0, inlineMaxChars: Infinity, maxChars: Infinity });

serveRpc(({ text, special }: EncodeRequest) => {
  const ids = Int32Array.from(tokenizer.encodeSync(text, { special }));
  return { value: ids, transfer: [ids.buffer as ArrayBuffer] };
});
