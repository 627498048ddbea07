import { fork, type ChildProcess } from 'node:child_process';
import { ServerError } from '../errors.js';
import type { RenderReply, RenderRequest } from './template-child.js';

/** A render that takes longer is stopped (its process killed): real templates take milliseconds. */
export const RENDER_TIMEOUT_MS = 5000;
/** The renderer's heap: templates need a few megabytes; a runaway one must not take the server's memory. */
const CHILD_HEAP_MB = 1024;

interface Job extends RenderRequest {
  resolve: (text: string) => void;
  reject: (e: Error) => void;
}

/**
 * Renders chat templates in a child process, one at a time, each bounded in time. A template is a
 * program: one that loops runs until it is stopped, and V8 aborts a whole process on some
 * allocations (an array past its largest length, from `'x' * 2**27 | list` say), which neither a
 * try/catch nor a worker thread contains. So the renders run where such an end costs only the
 * render that caused it: its request gets 400, and the next render starts a new process. Started on
 * the first chat request; it keeps the server alive only while it holds work.
 */
export class TemplateRenderer {
  private child: ChildProcess | null = null;
  /** The start of the child's stderr: what V8 said when it aborted (a stack trace follows). */
  private lastWords = '';
  private readonly queue: Job[] = [];
  private running: { job: Job; child: ChildProcess; timer: NodeJS.Timeout } | null = null;

  render(template: string, context: Record<string, unknown>, maxChars: number): Promise<string> {
    return new Promise((resolve, reject) => {
      this.queue.push({ template, context, maxChars, resolve, reject });
      this.next();
    });
  }

  /** Sends the next job, once the one running has ended; its time starts then, not while it waits. */
  private next(): void {
    if (this.running || this.queue.length === 0) return;
    const job = this.queue.shift()!;
    const child = (this.child ??= this.start());
    try {
      child.send({ template: job.template, context: job.context, maxChars: job.maxChars } satisfies RenderRequest);
    } catch (e) {
      job.reject(new ServerError('invalid_request', `the messages cannot be passed to the chat template: ${(e as Error).message}`));
      return this.next();
    }
    const timer = setTimeout(() => this.stop(child, new ServerError('invalid_request', `the chat template did not finish rendering within ${RENDER_TIMEOUT_MS} ms`)), RENDER_TIMEOUT_MS);
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

  /** Kills `child` (stuck, or gone bad): the job it was running ends with `why`; the next one starts a new process. */
  private stop(child: ChildProcess, why: Error): void {
    if (this.child === child) this.child = null;
    child.kill('SIGKILL');
    if (this.running?.child === child) this.finish(why);
  }

  private start(): ChildProcess {
    const child = fork(new URL('./template-child.js', import.meta.url), [], { execArgv: [`--max-old-space-size=${CHILD_HEAP_MB}`], stdio: ['ignore', 'ignore', 'pipe', 'ipc'], serialization: 'json' });
    child.stderr!.on('data', (d: Buffer) => {
      if (this.lastWords.length < 2000) this.lastWords += d.toString();
    });
    (child.stderr as unknown as { unref(): void }).unref(); // read, but never what keeps the server alive
    child.on('message', (reply: RenderReply) => {
      if (this.running?.child !== child) return;
      if ('text' in reply) this.finish(reply.text);
      else if ('tooLong' in reply) this.finish(new ServerError('prompt_too_long', `the chat template rendered ${reply.tooLong} characters; the limit is ${this.running.job.maxChars} (MAX_PROMPT_CHARS)`));
      else this.finish(new ServerError('invalid_request', `the chat template refused the messages: ${reply.error}`));
    });
    const died = (how: string) => {
      if (this.child === child) this.child = null;
      const said = this.lastWords.split('\n').find((l) => /fatal error|heap|invalid/i.test(l) && !/Fatal error in/.test(l))?.replace(/^#\s*/, '').trim();
      this.lastWords = '';
      if (this.running?.child === child) this.finish(new ServerError('invalid_request', `the chat template stopped its renderer (${how})${said ? `: ${said}` : ''}`));
    };
    child.on('close', (code, signal) => died(signal ?? `exit code ${code}`)); // after its stderr, which says why
    child.on('error', (e) => died(e.message));
    return child;
  }

  /** Stops the renderer: what waits fails (the server is shutting down). */
  close(): void {
    for (const job of this.queue.splice(0)) job.reject(new ServerError('shutting_down', 'the server is shutting down'));
    if (this.child) this.stop(this.child, new ServerError('shutting_down', 'the server is shutting down'));
  }
}
