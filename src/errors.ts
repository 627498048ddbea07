/** Every error the server can answer with: one code, one HTTP status. */
export const ERROR_STATUS = {
  invalid_request: 400,
  not_a_classification_task: 400,
  invalid_adapter: 400,
  unauthorized: 401,
  task_not_found: 404,
  reserved_task: 409,
  prompt_too_long: 413,
  payload_too_large: 413,
  overloaded: 429,
  rate_limited: 429,
  internal_error: 500,
  not_ready: 503,
  shutting_down: 503,
  worker_crashed: 503,
  store_unavailable: 503,
  request_timeout: 504,
  cancelled: 499,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export class ServerError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'ServerError';
    this.status = ERROR_STATUS[code];
  }
}

/** 503 shutting_down; `what` says what was not done (": the upload was not stored"). */
export function shuttingDown(what = '', headers: Record<string, string> = {}): ServerError {
  return new ServerError('shutting_down', `the server is shutting down${what}`, headers);
}

/** A model or adapter file that cannot be used; `code` names the check that failed. */
export class FormatError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'FormatError';
  }
}

export function errorBody(code: string, message: string) {
  return { error: { code, message } };
}
