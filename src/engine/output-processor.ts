import type { Logger } from 'pino';
import { ServerError } from '../errors.js';
import type { Job } from './jobs.js';
import type { Scheduler, SchedulerEvent } from './scheduler.js';

/**
 * Applies one scheduler event to its request: feeds the token (detokenising, stop strings and
 * streaming run in the job's callbacks), retires the row when the request is done, and completes
 * the job. Everything runs inside one try/catch per event, so a callback that throws ends its own
 * request with an error and nothing else: not the batch, not the lane's loop.
 */
export function applyEvent(ev: SchedulerEvent, scheduler: Scheduler | null, log: Logger): void {
  let completed = false;
  try {
    if (ev.type === 'token') {
      const verdict = ev.job.cancelled ? 'stop' : ev.job.onToken(ev.choice);
      if (verdict === 'continue') return;
      scheduler?.retire(ev.seq);
      completed = true;
      ev.job.finish(null);
    } else if (ev.type === 'scored') {
      completed = true;
      ev.job.done(ev.logprobs, null);
    } else {
      completed = true;
      complete(ev.job, ev.type === 'failed' ? ev.error : null);
    }
  } catch (e) {
    log.error({ err: (e as Error).message, job: ev.job.id }, 'a request callback failed; ending that request');
    if (ev.type === 'token') scheduler?.retire(ev.seq);
    if (completed) return;
    try {
      complete(ev.job, new ServerError('internal_error', 'this request failed while its output was processed'));
    } catch (again) {
      log.error({ err: (again as Error).message, job: ev.job.id }, 'a request could not be completed');
    }
  }
}

/** Completes a job: with `err`, or (cancelled) with nothing, since its caller has already answered. */
function complete(job: Job, err: Error | null): void {
  if (job.type === 'generate') job.finish(err);
  else job.done(null, err);
}
