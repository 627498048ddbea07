/**
 * Mutated adapter uploads: a valid upload of a demo adapter with one thing changed — a part (dropped,
 * doubled, renamed, sent as a form field, emptied, truncated, garbage), a field of adapter_config.json
 * or task.json (any JSON value, deleted, prototype keys), the safetensors header (length, dtype,
 * shape, offsets) or its data (NaN). Each refusal must be a 4xx in the error shape that leaves the
 * registry as it was; each acceptance must serve. Used by test/reliability/uploads.test.ts (CI size)
 * and, run directly, at full size:
 *   node dist/bench/reliability/uploads.js       # UPLOAD_COUNT=1000 UPLOAD_SEED=1
 */
import fc from 'fast-check';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkResponse } from './requests.js';

type Part = { name: string; data: Buffer; file: boolean };
export interface Mutation {
  source: string;
  what: string;
  parts: Part[];
}

const SOURCES = ['pos-prefix', 'pos-bitfit', 'kjv-prompt', 'fortune-ptuning'];
const FILES = ['adapter_config.json', 'adapter_model.safetensors', 'task.json'];
const anyJson = fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.constantFrom(null, true, -1, 0, 2.5, 1e9, '', [], {}, 'toString', '__proto__', ['PROMPT_TUNING'], 'x'.repeat(300_000)));
const keyName = (known: string[]) => fc.oneof(fc.constantFrom(...known), fc.constantFrom('__proto__', 'constructor', 'toString'), fc.string({ maxLength: 12 }));

function filesOf(root: string, source: string): Part[] {
  return FILES.map((name) => ({ name, data: readFileSync(join(root, 'adapters', source, name)), file: true }));
}

function editJson(data: Buffer, key: string, value: unknown | undefined): Buffer {
  const obj = JSON.parse(data.toString());
  if (value === undefined) delete obj[key];
  else Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
  return Buffer.from(JSON.stringify(obj));
}

function editHeader(data: Buffer, edit: (h: Record<string, { dtype: unknown; shape: unknown; data_offsets: unknown }>) => void): Buffer {
  const n = Number(data.readBigUInt64LE(0));
  const header = JSON.parse(data.subarray(8, 8 + n).toString());
  edit(header);
  const h = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([len, h, data.subarray(8 + n)]);
}

export function mutations(root: string): fc.Arbitrary<Mutation> {
  const at = (i: number, f: (p: Part) => Part) => (parts: Part[]) => parts.map((p, j) => (j === i ? f(p) : p));
  const partOps = fc.record({ i: fc.integer({ min: 0, max: 2 }), op: fc.constantFrom('drop', 'double', 'rename', 'field', 'empty', 'truncate', 'garbage', 'append', 'swap'), cut: fc.nat(), junk: fc.uint8Array({ maxLength: 64 }), name: fc.string({ maxLength: 20 }) }).map(
    ({ i, op, cut, junk, name }) => ({
      what: `${FILES[i]}: ${op}`,
      apply: (parts: Part[]): Part[] => {
        switch (op) {
          case 'drop':
            return parts.filter((_, j) => j !== i);
          case 'double':
            return [...parts, parts[i]];
          case 'rename':
            return at(i, (p) => ({ ...p, name: name.replace(/["\r\n]/g, '') || 'x' }))(parts);
          case 'field':
            return at(i, (p) => ({ ...p, file: false }))(parts);
          case 'empty':
            return at(i, (p) => ({ ...p, data: Buffer.alloc(0) }))(parts);
          case 'truncate':
            return at(i, (p) => ({ ...p, data: p.data.subarray(0, cut % Math.max(1, p.data.length)) }))(parts);
          case 'garbage':
            return at(i, (p) => ({ ...p, data: Buffer.from(junk) }))(parts);
          case 'append':
            return at(i, (p) => ({ ...p, data: Buffer.concat([p.data, Buffer.from(junk)]) }))(parts);
          default:
            return at(i, (p) => ({ ...p, data: parts[(i + 1) % 3].data }))(parts);
        }
      },
    }),
  );
  const configOps = fc.record({ key: keyName(['peft_type', 'task_type', 'num_virtual_tokens', 'token_dim', 'num_layers', 'num_attention_heads', 'num_transformer_submodules', 'bias_values']), value: fc.option(anyJson, { nil: undefined }) }).map(({ key, value }) => ({
    what: `adapter_config.json ${key} = ${JSON.stringify(value)?.slice(0, 40)}`,
    apply: at(0, (p) => ({ ...p, data: editJson(p.data, key, value) })),
  }));
  const taskOps = fc.record({ key: keyName(['kind', 'prompt_template', 'labels']), value: fc.option(fc.oneof(anyJson, fc.array(fc.string({ maxLength: 300 }), { maxLength: 70 }), fc.string({ maxLength: 100 }).map((s) => `${s}{text}`)), { nil: undefined }) }).map(({ key, value }) => ({
    what: `task.json ${key} = ${JSON.stringify(value)?.slice(0, 40)}`,
    apply: at(2, (p) => ({ ...p, data: editJson(p.data, key, value) })),
  }));
  const headerOps = fc.record({ field: fc.constantFrom('dtype', 'shape', 'data_offsets', 'name', 'length'), value: anyJson, length: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }).map(({ field, value, length }) => ({
    what: `safetensors ${field} = ${field === 'length' ? length : JSON.stringify(value)?.slice(0, 40)}`,
    apply: at(1, (p) => {
      if (field === 'length') {
        const data = Buffer.from(p.data);
        data.writeBigUInt64LE(length, 0);
        return { ...p, data };
      }
      return {
        ...p,
        data: editHeader(p.data, (h) => {
          const name = Object.keys(h).find((k) => k !== '__metadata__')!;
          if (field === 'name') {
            h[typeof value === 'string' ? value : '__proto__'] = h[name];
            delete h[name];
          } else (h[name] as Record<string, unknown>)[field] = value;
        }),
      };
    }),
  }));
  const nanOps = fc.nat().map((k) => ({
    what: 'a NaN in the weights',
    apply: at(1, (p) => {
      const data = Buffer.from(p.data);
      const n = Number(data.readBigUInt64LE(0));
      const start = 8 + n;
      const offset = start + 4 * (k % Math.max(1, Math.floor((data.length - start) / 4)));
      data.writeUInt32LE(0x7fc00000, offset);
      return { ...p, data };
    }),
  }));
  return fc.record({ source: fc.constantFrom(...SOURCES), op: fc.oneof(partOps, configOps, taskOps, headerOps, nanOps) }).map(({ source, op }) => ({ source, what: `${source}: ${op.what}`, parts: op.apply(filesOf(root, source)) }));
}

export function multipartBody(parts: Part[]): { body: Buffer; type: string } {
  const boundary = `sps-upload-${Math.random().toString(16).slice(2)}`;
  const chunks: Buffer[] = [];
  for (const p of parts) {
    const disposition = p.file ? `form-data; name="${p.name}"; filename="${p.name}"` : `form-data; name="${p.name}"`;
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: ${disposition}\r\n\r\n`), p.data, Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(chunks), type: `multipart/form-data; boundary=${boundary}` };
}

export interface UploadReport {
  sent: number;
  accepted: number;
  statuses: Record<number, number>;
  problems: { index: number; what: string; problem: string }[];
}

/** Uploads each mutation to TARGET; checks the answer, the registry after a refusal, serving after an acceptance. */
export async function fuzzUploads(url: string, root: string, adminToken: string, count: number, seed: number): Promise<UploadReport> {
  const auth = { authorization: `Bearer ${adminToken}` };
  const target = 'fuzz-upload-target';
  const put = async (parts: Part[]) => {
    const { body, type } = multipartBody(parts);
    try {
      const res = await fetch(`${url}/v1/adapters/${target}`, { method: 'PUT', headers: { ...auth, 'content-type': type }, body: new Uint8Array(body), signal: AbortSignal.timeout(30_000) });
      return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
    } catch (e) {
      return { status: 0, type: null, text: `no answer: ${(e as Error).message}` };
    }
  };
  // A refusal answered before its body was read may close the connection: a reset on the next
  // request over that socket is the client's to retry, not the server failing (it must answer the retry).
  const listing = async (): Promise<string> => {
    for (let attempt = 0; ; attempt++) {
      try {
        return await (await fetch(`${url}/v1/adapters`, { headers: auth })).text();
      } catch (e) {
        if (attempt >= 2) throw e;
      }
    }
  };
  const report: UploadReport = { sent: 0, accepted: 0, statuses: {}, problems: [] };
  let source = '';
  for (const [index, m] of fc.sample(mutations(root), { numRuns: count, seed }).entries()) {
    if (m.source !== source) {
      const restored = await put(filesOf(root, m.source));
      if (restored.status >= 300) throw new Error(`could not restore ${m.source}: ${restored.text}`);
      source = m.source;
    }
    const before = await listing();
    const res = await put(m.parts);
    report.sent++;
    report.statuses[res.status] = (report.statuses[res.status] ?? 0) + 1;
    const bad = (problem: string) => report.problems.push({ index, what: m.what, problem });
    const shape = res.status === 0 ? res.text : checkResponse(res.status, res.type, res.text, 'PUT');
    if (shape) bad(shape);
    if (res.status >= 400) {
      const after = await listing();
      if (after !== before) bad('the registry changed after a refusal');
      continue;
    }
    // Accepted: it must serve, then the original goes back.
    report.accepted++;
    const generate = () => fetch(`${url}/v1/tasks/${target}/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'happily', max_tokens: 2, temperature: 0 }) });
    const gen = await generate().catch(generate); // one retry on a connection reset (see listing)
    if (gen.status !== 200) bad(`accepted, but generate answers ${gen.status}: ${(await gen.text()).slice(0, 200)}`);
    else await gen.arrayBuffer();
    source = '';
  }
  return report;
}

/** A scratch copy of the demo adapters for a server to own. */
export function adaptersScratch(root: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'sps-uploads-'));
  cpSync(join(root, 'adapters'), dir, { recursive: true });
  return dir;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { machineInfo, startServerProcess } = await import('../harness.js');
  const count = Number(process.env.UPLOAD_COUNT ?? 1000);
  const seed = Number(process.env.UPLOAD_SEED ?? 1);
  const root = process.cwd();
  const server = await startServerProcess({ ADMIN_TOKEN: 'upload-admin', ADAPTERS_DIR: adaptersScratch(root), MAX_ADAPTER_BYTES: String(4 * 2 ** 20) });
  const t0 = performance.now();
  const report = await fuzzUploads(server.url, root, 'upload-admin', count, seed);
  const seconds = (performance.now() - t0) / 1000;
  const alive = server.child.exitCode === null;
  await server.stop();
  writeFileSync('bench/results/uploads.json', JSON.stringify({ machine: machineInfo(), count, seed, seconds, alive, ...report }, null, 2));
  console.log('| uploads | seed | seconds | statuses | accepted (and served) | contract breaks | process alive |');
  console.log('| ---: | ---: | ---: | --- | ---: | ---: | --- |');
  console.log(`| ${report.sent} | ${seed} | ${seconds.toFixed(0)} | ${Object.entries(report.statuses).map(([s, n]) => `${s}: ${n}`).join(', ')} | ${report.accepted} | ${report.problems.length} | ${alive ? 'yes' : 'NO'} |`);
  for (const p of report.problems.slice(0, 30)) console.log(`#${p.index} ${p.what}: ${p.problem}`);
}
