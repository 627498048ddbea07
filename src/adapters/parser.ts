import { FormatError, ServerError } from '../errors.js';
import { WorkerRpc } from '../worker-rpc.js';
import { sharedBytes } from './shared-bytes.js';
import { parseAdapter, type Adapter, type AdapterFiles, type ParseBase } from './format.js';
import { checkServable } from './task-spec.js';

export interface ParseRequest {
  task: string;
  files: AdapterFiles;
  createdAt: string;
}

/**
 * Below this many bytes an adapter is parsed on the calling thread: a worker's round trip (two
 * copies of the files and the tensors' transfer) costs more than the parse. Parsing runs at about
 * 100 MB/s (hash, value check, LoRA's transposes), so inline parses block for a few milliseconds.
 */
export const PARSE_INLINE_BYTES = 256 * 1024;

/** Uploads are rare: the worker goes after this long idle, and with it what it last held. */
const PARSER_IDLE_MS = 10_000;

const filesBytes = (f: AdapterFiles) => f.config.length + f.weights.length + (f.task?.length ?? 0);

/**
 * Parses adapters off the event loop. An upload of a 44 MB LoRA took 300-500 ms to parse, and on
 * the event loop every stream and health probe of the replica stalled meanwhile (so did every
 * replica following it through Redis, and a request whose evicted adapter came back from the store).
 * The worker gets the base model's config and biases once; its tensors come back in shared memory,
 * so nothing large is copied on the way back. The tokenizer stays here: checkServable, which needs
 * it, encodes only task.json's short template and labels.
 */
export class AdapterParser {
  private readonly rpc: WorkerRpc<ParseRequest, Adapter>;

  constructor(
    private readonly base: ParseBase,
    private readonly inlineBytes = PARSE_INLINE_BYTES,
    idleMs = PARSER_IDLE_MS,
  ) {
    this.rpc = new WorkerRpc(new URL('./parse-worker.js', import.meta.url), {
      workerData: { config: base.config, biases: base.biases },
      refused: (f) => (f.name === 'FormatError' && f.code !== undefined ? new FormatError(f.code, f.message) : new Error(`adapter parser: ${f.message}`)),
      crashed: (why) => new ServerError('internal_error', `the adapter parser worker ${why}`),
      idleMs,
    });
  }

  async parse(task: string, files: AdapterFiles, createdAt = new Date().toISOString()): Promise<Adapter> {
    if (filesBytes(files) <= this.inlineBytes) return parseAdapter(task, files, this.base, createdAt);
    // An upload arrives in shared memory already (routes/admin.ts); a store's load is moved there.
    const [config, weights, taskJson] = await Promise.all([sharedBytes([files.config]), sharedBytes([files.weights]), files.task && sharedBytes([files.task])]);
    const request = { task, files: { config, weights, task: taskJson }, createdAt };
    // A worker that died (out of memory, say) is no verdict on the files: once more, in a new one.
    const adapter = await this.rpc.call(request).catch((e: unknown) => (e instanceof ServerError && e.code === 'internal_error' ? this.rpc.call(request) : Promise.reject(e)));
    // parseAdapter's last check, here because it needs the tokenizer.
    if (this.base.encode) checkServable(adapter.spec, adapter.tensors.virtualTokens, this.base.config.nPositions, this.base.encode);
    return adapter;
  }

  close(): Promise<void> {
    return this.rpc.close();
  }
}
