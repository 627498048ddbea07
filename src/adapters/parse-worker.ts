import { workerData } from 'node:worker_threads';
import { serveRpc } from '../worker-rpc.js';
import { parseAdapter, type ParseBase } from './format.js';
import type { ParseRequest } from './parser.js';

const base = workerData as ParseBase;
// Buffers arrive as plain Uint8Arrays (structured clone); the parser reads them as Buffers.
const buffer = (u: Uint8Array) => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

serveRpc(({ task, files, createdAt }: ParseRequest) => ({
  value: parseAdapter(task, { config: buffer(files.config), weights: buffer(files.weights), task: files.task && buffer(files.task) }, base, createdAt),
}));
