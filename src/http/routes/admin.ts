import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type, type Static } from '@sinclair/typebox';
import type { AdapterFiles } from '../../adapters/format.js';
import type { Registry } from '../../adapters/registry.js';
import { ServerError, shuttingDown } from '../../errors.js';
import { LoopTurns } from '../../loop-turns.js';
import { untilAborted } from '../until-aborted.js';
import { bearerGuard } from '../auth.js';
import { ErrorBody, TaskParams } from '../schemas.js';

const FILES: Record<string, keyof AdapterFiles> = {
  'adapter_config.json': 'config',
  'adapter_model.safetensors': 'weights',
  'task.json': 'task',
};

const AdapterInfo = Type.Object({
  task: Type.String(),
  version: Type.String(),
  peft_type: Type.String(),
  kind: Type.String(),
  bytes: Type.Integer(),
  created_at: Type.String(),
});

const MAX_PAGE = 1000;
const ListQuery = Type.Object({
  // A string: query values arrive as text, and the server coerces no types.
  limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,7}$', description: `at most this many adapters, 1 to ${MAX_PAGE} (default: all)` })),
  after: Type.Optional(Type.String({ maxLength: 128, description: 'only task ids after this one: the last task of the previous page' })),
});
const AdapterList = Type.Object({
  adapters: Type.Array(AdapterInfo),
  has_more: Type.Boolean({ description: 'more adapters follow the last one listed' }),
});

const EXPECTED = 'expected file parts adapter_config.json, adapter_model.safetensors and optionally task.json';

const fileTooLarge = (maxBytes: number) => new ServerError('payload_too_large', `a file of the upload is larger than MAX_ADAPTER_BYTES (${maxBytes})`);

/**
 * The multipart plugin's and busboy's failures, as errors a user can act on: sizes are 413, every
 * other malformation (no boundary, truncated body, too many parts) is 400 with what to send instead.
 */
function uploadError(e: unknown, maxBytes: number): ServerError {
  if (e instanceof ServerError) return e;
  const err = e as { code?: string; message?: string };
  const message = String(err.message ?? e).slice(0, 200);
  switch (err.code) {
    case 'FST_REQ_FILE_TOO_LARGE':
      return fileTooLarge(maxBytes);
    case 'FST_FILES_LIMIT':
    case 'FST_PARTS_LIMIT':
    case 'FST_FIELDS_LIMIT':
      return new ServerError('invalid_adapter', `too many parts in the upload (${EXPECTED})`);
    case 'FST_INVALID_MULTIPART_CONTENT_TYPE':
      return new ServerError('invalid_request', 'the upload must be multipart/form-data with the adapter files');
  }
  if (/boundary/i.test(message)) {
    return new ServerError('invalid_request', 'the multipart/form-data content type has no boundary parameter; let the client build the body (curl -F name=@file)');
  }
  return new ServerError('invalid_request', `the multipart body could not be read: ${message}`);
}

/** An upload still arriving at shutdown: 503, and the connection closes once the answer is sent. */
const uploadStopped = () => shuttingDown(': the upload was not stored', { connection: 'close' });

/** A zeroed buffer (its pages are mapped as written), or 429 where the memory cannot be had now. */
function reserve(bytes: number): Buffer {
  try {
    return Buffer.alloc(bytes);
  } catch (e) {
    throw new ServerError('overloaded', `cannot reserve ${bytes} bytes for the upload now: ${(e as Error).message}`, { 'retry-after': '5' });
  }
}

/**
 * Reads the multipart upload: known file parts only, each bounded, the whole bounded too. The files
 * are laid one after another in one buffer of the body's size (MAX_ADAPTER_BYTES at most), each
 * chunk copied there as it arrives: only the pages written take memory, and the copying is spread
 * over the upload (a 44 MB Buffer.concat at the end stalled the event loop for 130 ms, mostly page
 * faults).
 */
async function readUpload(req: FastifyRequest, maxBytes: number, closing: AbortSignal): Promise<AdapterFiles> {
  if (!req.isMultipart()) throw new ServerError('invalid_request', 'the upload must be multipart/form-data with the adapter files');
  const files: Partial<AdapterFiles> = {};
  // The files are smaller than the body: no more than Content-Length is reserved (all of
  // MAX_ADAPTER_BYTES for a chunked body).
  const length = Number(req.headers['content-length']);
  const arena = reserve(Number.isSafeInteger(length) && length >= 0 ? Math.min(maxBytes, length) : maxBytes);
  let used = 0;
  const turns = new LoopTurns();
  try {
    for await (const part of untilAborted(req.parts(), closing, uploadStopped)) {
      const name = part.fieldname.slice(0, 64);
      const key = Object.hasOwn(FILES, part.fieldname) ? FILES[part.fieldname] : undefined;
      if (!key) throw new ServerError('invalid_adapter', `unexpected part '${name}' (${EXPECTED})`);
      if (part.type !== 'file') {
        throw new ServerError('invalid_adapter', `'${name}' was sent as a form field, not a file: send its contents as a file part (curl -F '${name}=@path/${name}', with @, not <)`);
      }
      if (files[key]) throw new ServerError('invalid_adapter', `'${name}' appears twice in the upload`);
      const start = used;
      for await (const chunk of untilAborted<Buffer>(part.file, closing, uploadStopped)) {
        if (used + chunk.length > arena.length) throw used - start + chunk.length > maxBytes ? fileTooLarge(maxBytes) : new ServerError('payload_too_large', `the adapter is larger than MAX_ADAPTER_BYTES (${maxBytes})`);
        used += chunk.copy(arena, used);
        // Buffered chunks arrive in one run of microtasks: the streams get a turn every slice.
        await turns.handled(chunk.length);
      }
      // The plugin's per-file limit (the same bound) ends a file early and marks it truncated.
      if (part.file.truncated) throw fileTooLarge(maxBytes);
      files[key] = arena.subarray(start, used);
    }
  } catch (e) {
    if (closing.aborted) {
      // Answered 503 with the body unread: read the rest and drop it, so that the connection ends
      // when the client stops sending (a paused socket never sees its end, and would hold the
      // process until the shutdown deadline; a reset could lose the answer).
      req.raw.unpipe();
      req.raw.resume();
    }
    throw uploadError(e, maxBytes);
  }
  for (const name of ['adapter_config.json', 'adapter_model.safetensors']) {
    if (!files[FILES[name]]) throw new ServerError('invalid_adapter', `missing_file: ${name} is missing from the upload (${EXPECTED})`);
  }
  return files as AdapterFiles;
}

export function adminRoutes(app: FastifyInstance, registry: Registry, adminToken: string, maxAdapterBytes: number): void {
  const onRequest = bearerGuard([adminToken], 'adapter administration');
  const security = [{ adminToken: [] }];
  app.put<{ Params: TaskParams }>(
    '/v1/adapters/:task',
    {
      onRequest,
      schema: {
        tags: ['adapters'],
        summary: 'Upload or replace a task adapter (multipart: adapter_config.json, adapter_model.safetensors, task.json)',
        security,
        params: TaskParams,
        consumes: ['multipart/form-data'],
        response: { 200: AdapterInfo, 201: AdapterInfo, 400: ErrorBody, 401: ErrorBody, 409: ErrorBody, 413: ErrorBody, 503: ErrorBody },
      },
    },
    async (req, reply) => {
      if (req.params.task === 'base') throw new ServerError('reserved_task', "'base' is the frozen model and cannot be replaced");
      const files = await readUpload(req, maxAdapterBytes, registry.closing);
      const { info, created } = await registry.upload(req.params.task, files);
      return reply.code(created ? 201 : 200).send(info);
    },
  );
  app.get<{ Querystring: Static<typeof ListQuery> }>(
    '/v1/adapters',
    {
      onRequest,
      schema: {
        tags: ['adapters'],
        summary: 'List the registered adapters, in task-id order; `limit` and `after` page through them',
        security,
        querystring: ListQuery,
        response: { 200: AdapterList, 400: ErrorBody, 401: ErrorBody },
      },
    },
    async (req) => {
      const limit = req.query.limit === undefined ? undefined : Number(req.query.limit);
      if (limit !== undefined && (limit < 1 || limit > MAX_PAGE)) throw new ServerError('invalid_request', `limit must be an integer from 1 to ${MAX_PAGE}`);
      const { adapters, hasMore } = registry.page(req.query.after, limit ?? Infinity);
      return { adapters, has_more: hasMore };
    },
  );
  app.get<{ Params: TaskParams }>(
    '/v1/adapters/:task',
    { onRequest, schema: { tags: ['adapters'], summary: 'One adapter', security, params: TaskParams, response: { 200: AdapterInfo, 401: ErrorBody, 404: ErrorBody } } },
    async (req) => registry.describe(req.params.task),
  );
  app.delete<{ Params: TaskParams }>(
    '/v1/adapters/:task',
    { onRequest, schema: { tags: ['adapters'], summary: 'Delete an adapter; admitted requests finish', security, params: TaskParams, response: { 401: ErrorBody, 404: ErrorBody, 409: ErrorBody, 503: ErrorBody } } },
    async (req, reply) => {
      await registry.remove(req.params.task);
      return reply.code(204).send();
    },
  );
}
