import { FormatError, ServerError } from '../errors.js';
import { SLICE_BYTES } from '../loop-turns.js';
import { WorkerRpc } from '../worker-rpc.js';
import { parseAdapter, type Adapter, type AdapterFiles, type ParseBase } from './format.js';
import { checkServable } from './task-spec.js';

/**
 * What the worker is sent: each file in slices (`slice`), then `parse`. Slices, because a message
 * is a copy: one 44 MB message stalled the event loop 140 ms. A SharedArrayBuffer needs no copy,
 * but V8 does not count it towards collecting garbage: 16 uploads of 44 MB left RSS at 1.4 GB.
 */
export type ParseRequest =
  | { op: 'slice'; job: number; file: keyof AdapterFiles; bytes: Uint8Array }
  | { op: 'parse'; job: number; task: string; createdAt: string };

/**
 * Below this many bytes an adapter is parsed on the calling thread: a worker's round trip (the
 * files copied in slices, the tensors sent back) costs more than the parse. Parsing runs at about
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
 * The worker gets the base model's config and biases once; its tensors come back in shared memory
 * (where the inference workers read them too), so nothing large is copied on the way back. The
 * tokenizer stays here: checkServable, which needs it, encodes only task.json's template and labels.
 */
export class AdapterParser {
  private readonly rpc: WorkerRpc<ParseRequest, Adapter | null>;
  private nextJob = 0;

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
    const send = async (): Promise<Adapter> => {
      const job = this.nextJob++;
      for (const file of ['config', 'weights', 'task'] as const) {
        const buf = files[file];
        // A slice per message, each a turn of the event loop. Every file that is there sends a
        // slice, an empty one too: an empty task.json is not none.
        for (let at = 0; buf && (at === 0 || at < buf.length); at += SLICE_BYTES) {
          // A copy of the slice alone (a view would send its whole buffer), moved to the worker.
          const bytes = new Uint8Array(buf.subarray(at, at + SLICE_BYTES));
          await this.rpc.call({ op: 'slice', job, file, bytes }, [bytes.buffer]);
        }
      }
      return (await this.rpc.call({ op: 'parse', job, task, createdAt })) as Adapter;
    };
    // A worker that died (out of memory, say) is no verdict on the files: once more, in a new one.
    const adapter = await send().catch((e: unknown) => (e instanceof ServerError && e.code === 'internal_error' ? send() : Promise.reject(e)));
    // parseAdapter's last check, here because it needs the tokenizer.
    if (this.base.encode) checkServable(adapter.spec, adapter.tensors.virtualTokens, this.base.config.nPositions, this.base.encode);
    return adapter;
  }

  close(): Promise<void> {
    return this.rpc.close();
  }
}
