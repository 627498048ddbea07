import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from '@sinclair/typebox';
import type { AdapterFiles } from '../../adapters/format.js';
import type { Registry } from '../../adapters/registry.js';
import { ServerError } from '../../errors.js';
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

/** Reads the multipart upload: known parts only, each bounded, the whole bounded too. */
async function readUpload(req: FastifyRequest, maxBytes: number): Promise<AdapterFiles> {
  if (!req.isMultipart()) throw new ServerError('invalid_request', 'the upload must be multipart/form-data with the adapter files');
  const files: Partial<AdapterFiles> = {};
  let total = 0;
  for await (const part of req.parts()) {
    const key = FILES[part.fieldname];
    if (!key || part.type !== 'file') {
      throw new ServerError('invalid_adapter', `unexpected part '${part.fieldname.slice(0, 64)}' (expected files adapter_config.json, adapter_model.safetensors, task.json)`);
    }
    const buf = await part.toBuffer(); // bounded by the plugin's fileSize limit: throws past it
    total += buf.length;
    if (total > maxBytes) throw new ServerError('payload_too_large', `the adapter is larger than MAX_ADAPTER_BYTES (${maxBytes})`);
    files[key] = buf;
  }
  for (const name of ['adapter_config.json', 'adapter_model.safetensors']) {
    if (!files[FILES[name]]) throw new ServerError('invalid_adapter', `missing_file: ${name} is missing from the upload`);
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
      const files = await readUpload(req, maxAdapterBytes);
      const { info, created } = await registry.upload(req.params.task, files);
      return reply.code(created ? 201 : 200).send(info);
    },
  );
  app.get('/v1/adapters', { onRequest, schema: { tags: ['adapters'], summary: 'List the registered adapters', security, response: { 200: Type.Object({ adapters: Type.Array(AdapterInfo) }), 401: ErrorBody } } }, async () => ({
    adapters: registry.list(),
  }));
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
