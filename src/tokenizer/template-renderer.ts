import { fork, type ChildProcess } from 'node:child_process';
import { ServerError, shuttingDown } from '../errors.js';
import type { RenderReply, RenderRequest } from './template-child.js';

/** A render that takes longer is interrupted (400): real templates take milliseconds. */
export const RENDER_TIMEOUT_MS = 5000;
/** A child that has not answered this long after the bound (a long native call) is killed. */
const KILL_GRACE_MS = 2000;
/** Renders waiting beyond this are refused (429): each may take up to RENDER_TIMEOUT_MS. */
const MAX_QUEUE = 256;
/** The renderer's heap: templates need a few megabytes; a runaway one must not take the server's memory. */
const CHILD_HEAP_MB = 1024;

interface Job {
  request: RenderRequest;
  /** Sent to a process that then died, once: it may have died before the job reached it. */
  retried: boolean;
  resolve: (text: string) => void;
  reject: (e: Error) => void;
}

/**
 * Renders chat templates in a child process, one at a time, each within RENDER_TIMEOUT_MS. A
 * template is a program: one can loop without end, and V8 aborts a whole process on some
 * allocations (an array past its largest length), which neither a try/catch nor a worker thread
 * contains. Here such a render costs its own request (400) and a new process for the next. A job
 * whose client leaves is dropped from the queue, or its render stopped. Started on the first chat
 * request; it keeps the server alive only while it holds work.
 */
export class TemplateRenderer {
  private child: ChildProcess | null = null;
  private readonly queue: Job[] = [];
  private running: { job: Job; child: ChildProcess; timer: NodeJS.Timeout } | null = null;
  private closed = false;

  /** `timeoutMs`: each render's bound (tests of slow but finite renders raise it). */
  constructor(private readonly timeoutMs = RENDER_TIMEOUT_MS) {}

  /**
   * `signal`: the request ended (its client left, its time ran out; `signal.reason` says which, as a
   * ServerError): a waiting job leaves the queue, a running one is stopped (it may be one that never ends).
   */
  render(template: string, context: Record<string, unknown>, maxChars: number, signal?: AbortSignal): Promise<string> {
    if (this.closed) return Promise.reject(shuttingDown());
    if (signal?.aborted) return Promise.reject(ended(signal));
    if (this.queue.length >= MAX_QUEUE) return Promise.reject(new ServerError('overloaded', `${MAX_QUEUE} chat templates are waiting to render`, { 'retry-after': '5' }));
    return new Promise((resolve, reject) => {
      const onAbort = () => this.abandon(job, ended(signal!));
      // The listener goes when the job settles: it holds the job's messages, and a request lives on through its generation.
      const settle =
        <T>(f: (v: T) => void) =>
        (v: T) => {
          signal?.removeEventListener('abort', onAbort);
          f(v);
        };
      const job: Job = { request: { template, context, maxChars, timeoutMs: this.timeoutMs }, retried: false, resolve: settle(resolve), reject: settle(reject) };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.queue.push(job);
      this.next();
    });
  }

  private abandon(job: Job, why: ServerError): void {
    const at = this.queue.indexOf(job);
    if (at >= 0) {
      this.queue.splice(at, 1);
      job.reject(why);
    } else if (this.running?.job === job) this.stop(this.running.child, why);
  }

  /** Sends the next job once the one running has ended: its time starts then, not while it waits. */
  private next(): void {
    if (this.running || this.queue.length === 0) return;
    const job = this.queue.shift()!;
    let child: ChildProcess;
    try {
      child = this.child ??= this.start();
    } catch (e) {
      // No process (out of memory, or of file descriptors): this job fails, and the next tries again.
      job.reject(new ServerError('worker_crashed', `the chat template renderer cannot start: ${(e as Error).message}`));
      return this.next();
    }
    try {
      child.send(job.request);
    } catch (e) {
      job.reject(new ServerError('invalid_request', `the messages cannot be passed to the chat template: ${(e as Error).message}`));
      return this.next();
    }
    const timer = setTimeout(() => this.stop(child, this.timedOut()), this.timeoutMs + KILL_GRACE_MS);
    this.running = { job, child, timer };
    child.ref();
    child.channel?.ref();
  }

  /** Ends the running job; the renderer is referenced only while it holds work. */
  private finish(outcome: string | Error): void {
    const r = this.running;
    if (!r) return;
    clearTimeout(r.timer);
    this.running = null;
    if (typeof outcome === 'string') r.job.resolve(outcome);
    else r.job.reject(outcome);
    if (this.queue.length === 0) {
      r.child.unref();
      r.child.channel?.unref();
    }
    this.next();
  }

  /** Kills `child`: the job it was running ends with `why`; the next one starts a new process. */
  private stop(child: ChildProcess, why: Error): void {
    if (this.child === child) this.child = null;
    child.kill('SIGKILL');
    if (this.running?.child === child) this.finish(why);
  }

  private start(): ChildProcess {
    const child = fork(new URL('./template-child.js', import.meta.url), [], { execArgv: [`--max-old-space-size=${CHILD_HEAP_MB}`], stdio: ['ignore', 'ignore', 'pipe', 'ipc'], serialization: 'json' });
    if (!child.stderr) throw new Error('the process did not start');
    // The start of its stderr: what V8 said if it aborted (a stack trace follows).
    let said = '';
    child.stderr!.on('data', (d: Buffer) => {
      if (said.length < 2000) said += d.toString();
    });
    (child.stderr as unknown as { unref(): void }).unref(); // read, but never what keeps the server alive
    child.on('message', (reply: RenderReply) => {
      if (this.running?.child !== child) return;
      const limit = this.running.job.request.maxChars;
      if ('text' in reply) this.finish(reply.text);
      else if ('tooLong' in reply) this.finish(new ServerError('prompt_too_long', `the chat template rendered ${reply.tooLong} characters; the limit is ${limit} (MAX_PROMPT_CHARS)`));
      else if ('timedOut' in reply) this.finish(this.timedOut());
      else this.finish(new ServerError('invalid_request', `the chat template refused the messages: ${reply.error}`));
    });
    const died = (how: string) => {
      if (this.child === child) this.child = null;
      child.kill('SIGKILL'); // after an 'error' it may still run
      const r = this.running;
      if (r?.child !== child) return;
      if (!r.job.retried) {
        // It may have died before the job reached it (killed while idle): the job runs once more, in a new process.
        r.job.retried = true;
        clearTimeout(r.timer);
        this.running = null;
        this.queue.unshift(r.job);
        return this.next();
      }
      const line = said.split('\n').find((l) => /fatal error|heap|invalid/i.test(l) && !/Fatal error in/.test(l));
      this.finish(new ServerError('invalid_request', `the chat template stopped its renderer (${how})${line ? `: ${line.replace(/^#\s*/, '').trim()}` : ''}`));
    };
    child.on('close', (code, signal) => died(signal ?? `exit code ${code}`)); // after its stderr, which says why
    child.on('error', (e) => died(e.message));
    return child;
  }

  private timedOut(): ServerError {
    return new ServerError('invalid_request', `the chat template did not finish rendering within ${this.timeoutMs} ms`);
  }

  /** Stops the renderer: what waits fails (the server is shutting down). */
  close(): void {
    this.closed = true;
    for (const job of this.queue.splice(0)) job.reject(shuttingDown());
    if (this.child) this.stop(this.child, shuttingDown());
  }
}

/** Why a request's signal ended it: the reason its owner gave, or that its client left. */
const ended = (signal: AbortSignal) => (signal.reason instanceof ServerError ? signal.reason : new ServerError('cancelled', 'the client went away'));
