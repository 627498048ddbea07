import { workerData } from 'node:worker_threads';
import { serveRpc } from '../worker-rpc.js';
import { parseAdapter, type AdapterFiles, type ParseBase } from './format.js';
import type { ParseRequest } from './parser.js';

const base = workerData as ParseBase;
/** The files of each parse, as their slices arrive. */
const jobs = new Map<number, Record<keyof AdapterFiles, Buffer[]>>();

serveRpc((r: ParseRequest) => {
  const parts = jobs.get(r.job) ?? { config: [], weights: [], task: [] };
  jobs.set(r.job, parts);
  if (r.op === 'slice') {
    parts[r.file].push(Buffer.from(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength));
    return { value: null };
  }
  jobs.delete(r.job);
  const files = { config: Buffer.concat(parts.config), weights: Buffer.concat(parts.weights), task: parts.task.length ? Buffer.concat(parts.task) : undefined };
  return { value: parseAdapter(r.task, files, base, r.createdAt) };
});
