/**
 * Generated HTTP requests over every route, for the fuzzers (test/reliability, bench/reliability):
 * valid requests, near-valid ones with one field of the wrong type or size, and garbage — in types,
 * sizes, encodings, ids and parameters. fast-check draws them from a seed, so a failure is replayed
 * by its seed and index.
 */
import fc from 'fast-check';

export interface FuzzRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: string | Blob;
}

export interface FuzzOptions {
  adminToken: string;
  /** Longest generated text (prompts, inputs): bounds the model work of the requests that are valid. */
  maxText: number;
  /** Largest max_tokens of a valid generate request. */
  maxTokens: number;
  /**
   * Task ids of more than 100 characters and malformed %-escapes: fastify's router answers them
   * itself (414, 400) outside the error shape (issue 10, finding 13, not yet fixed on this branch).
   */
  routerEdgeCases?: boolean;
}

const TASKS = ['base', 'pos-prefix', 'pos-bitfit', 'pos-prompt', 'pos-ptuning', 'kjv-prompt', 'define-prefix', 'fortune-ptuning', 'pos-lora', 'fuzz-target'];
const WEIRD_IDS = ['__proto__', 'toString', 'constructor', 'hasOwnProperty', '..', '.', '%2e%2e', '%00', 'a%2Fb', 'A', '-x', 'x'.repeat(64), 'x'.repeat(65), 'x'.repeat(300), 'é', '%C3%A9', '%ZZ', '💥', 'base%20', ' base'];

const text = (max: number) =>
  fc.oneof(
    { weight: 5, arbitrary: fc.string({ maxLength: Math.min(max, 200) }) },
    { weight: 2, arbitrary: fc.string({ unit: 'grapheme', maxLength: Math.min(max, 200) }) },
    { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: Math.min(max, 200) }) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max }).chain((n) => fc.constantFrom('a', 'é', '日', 'the ', ' ', '\u0000', '{text}', '<|endoftext|>').map((c) => c.repeat(Math.ceil(n / c.length)).slice(0, n))) },
  );

const anyJson = fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.constantFrom(null, true, -1, 0, 1.5, 1e308, -1e308, '', [], {}, '__proto__', 'toString', ['PROMPT_TUNING'], Number.MAX_SAFE_INTEGER + 2));

/** A value that is usually right for the field, sometimes wrong in type or range. */
function field<T>(good: fc.Arbitrary<T>) {
  return fc.oneof({ weight: 40, arbitrary: good }, { weight: 1, arbitrary: anyJson });
}

function body(o: FuzzOptions, kind: 'generate' | 'classify' | 'score' | 'completions') {
  const prompt = text(o.maxText);
  const sampling = {
    max_tokens: field(fc.oneof(fc.integer({ min: 1, max: o.maxTokens }), fc.constantFrom(0, -1, 4097, 1e9, 2.5))),
    temperature: field(fc.oneof(fc.double({ min: 0, max: 2, noNaN: true }), fc.constantFrom(0, -1, 101))),
    top_p: field(fc.oneof(fc.double({ min: 0.01, max: 1, noNaN: true }), fc.constantFrom(0, 1.5))),
    top_k: field(fc.oneof(fc.integer({ min: 0, max: 100 }), fc.constantFrom(-1, 50257, 1e6))),
    seed: field(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER })),
    stop: field(fc.oneof(fc.array(text(20).filter((x) => x.length > 0), { maxLength: 4 }), text(20).filter((x) => x.length > 0))),
    logprobs: field(fc.oneof(fc.integer({ min: 0, max: 20 }), fc.constantFrom(-1, 21))),
    stream: field(fc.boolean()),
    raw: field(fc.boolean()),
    ignore_eos: field(fc.boolean()),
  };
  const prompts = fc.oneof(prompt, fc.array(prompt, { minLength: 0, maxLength: 6 }));
  const shapes = {
    generate: fc.record({ prompt: field(prompt), ...sampling }, { requiredKeys: ['prompt'] }),
    completions: fc.record({ model: field(fc.constantFrom(...TASKS, ...WEIRD_IDS)), prompt: field(prompts), ...sampling, n: anyJson, echo: field(fc.boolean()) }, { requiredKeys: ['model', 'prompt'] }),
    classify: fc.record(
      {
        input: field(prompts),
        labels: field(fc.array(text(40), { maxLength: 6 })),
        prompt_template: field(fc.oneof(text(100).map((s) => `${s}{text}`), text(100))),
      },
      { requiredKeys: ['input'] },
    ),
    score: fc.record({ prompt: field(prompt), completion: field(prompt), eos: field(fc.boolean()), raw: field(fc.boolean()), max_length: field(fc.integer({ min: -1, max: 600 })) }, { requiredKeys: ['prompt', 'completion'] }),
  };
  return fc.oneof(
    { weight: 12, arbitrary: shapes[kind].map((b) => JSON.stringify(b)) },
    { weight: 1, arbitrary: fc.record({ extra: anyJson, __proto__: anyJson }, { requiredKeys: [] }).map((b) => JSON.stringify(b)) },
    { weight: 1, arbitrary: fc.constantFrom('', '{', '{"prompt":', 'null', '[]', '"x"', '1', '{"prompt": "\\ud800"}', '{"__proto__": {"prompt": "x"}}', '{"prompt": "x", "prompt": 5}', '[' .repeat(5000)) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 512 }).map((b) => Buffer.from(b).toString('latin1')) },
  );
}

const contentType = fc.oneof(
  { weight: 10, arbitrary: fc.constant('application/json') },
  { weight: 1, arbitrary: fc.constantFrom('application/json; charset=utf-16', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data', 'multipart/form-data; boundary=x', 'application/JSON', '', 'application/json; charset=latin1', 'application/octet-stream') },
);

const ROUTER_EDGE = (id: string) => id.length > 100 || id === '%ZZ';

export function requests(o: FuzzOptions): fc.Arbitrary<FuzzRequest> {
  const weird = WEIRD_IDS.filter((id) => o.routerEdgeCases || !ROUTER_EDGE(id));
  const taskId = fc.oneof({ weight: 12, arbitrary: fc.constantFrom(...TASKS) }, { weight: 2, arbitrary: fc.constantFrom(...weird) }, { weight: 1, arbitrary: fc.string({ maxLength: 40 }).map(encodeURIComponent) });
  const auth = fc.oneof(fc.constant(undefined), fc.constant(`Bearer ${o.adminToken}`), fc.constantFrom('Bearer wrong', 'Bearer', 'Basic abc', `Bearer ${o.adminToken}\u00a0`, 'bearer  ' + o.adminToken));
  const headersWith = (type: fc.Arbitrary<string>) =>
    fc.record({ type, auth, extra: fc.option(fc.constantFrom<[string, string]>(['x-request-id', 'x'.repeat(200)], ['accept', 'text/event-stream'], ['content-encoding', 'gzip'], ['x-forwarded-for', '1.2.3.4'])) }).map(({ type, auth, extra }) => {
      const h: Record<string, string> = {};
      if (type) h['content-type'] = type;
      if (auth) h.authorization = auth;
      if (extra) h[extra[0]] = extra[1];
      return h;
    });
  const inference = fc.constantFrom('generate', 'classify', 'score' as const).chain((kind) =>
    fc.record({ task: taskId, headers: headersWith(contentType), body: body(o, kind) }).map((r) => ({ method: 'POST', path: `/v1/tasks/${r.task}/${kind}`, headers: r.headers, body: r.body })),
  );
  const completions = fc.record({ headers: headersWith(contentType), body: body(o, 'completions') }).map((r) => ({ method: 'POST', path: '/v1/completions', headers: r.headers, body: r.body }));
  const admin = fc.record({ method: fc.constantFrom('GET', 'DELETE', 'PUT'), task: taskId, headers: headersWith(fc.constantFrom('application/json', 'multipart/form-data; boundary=b', 'multipart/form-data', 'text/plain')), body: fc.oneof(fc.constant(undefined), fc.string({ maxLength: 300 }), fc.constant('--b\r\nContent-Disposition: form-data; name="adapter_config.json"\r\n\r\n{}\r\n--b--\r\n')) }).map(
    // Deletes spare the demo adapters, so that later requests still reach the model.
    (r) => ({ method: r.method, path: `/v1/adapters/${r.method === 'DELETE' && TASKS.includes(r.task) && r.task !== 'base' && r.task !== 'fuzz-target' ? `fuzz-${r.task}` : r.task}`, headers: r.headers, body: r.method === 'GET' ? undefined : r.body }),
  );
  const operations = fc.record({
    method: fc.constantFrom('GET', 'HEAD', 'POST', 'OPTIONS', 'PATCH'),
    path: fc.constantFrom('/healthz', '/readyz', '/metrics', '/openapi.json', '/v1/adapters', '/', '/nope', '/v1/tasks', '/v1/tasks//generate', '/v1/tasks/base/generate?x=1', '/v1/' + 'a/'.repeat(200), '/v1/completions', ...(o.routerEdgeCases ? ['/%'] : [])),
    headers: headersWith(fc.constantFrom('', 'application/json')),
  }).map((r) => ({ ...r }));
  return fc.oneof({ weight: 10, arbitrary: inference }, { weight: 4, arbitrary: completions }, { weight: 3, arbitrary: admin }, { weight: 2, arbitrary: operations });
}

/** What a response must be: below 500, and every error in the documented `{error: {code, message}}` shape. */
export function checkResponse(status: number, contentType: string | null, text: string, method: string): string | null {
  if (status >= 500) return `status ${status}: ${text.slice(0, 300)}`;
  if (status < 400 || method === 'HEAD') return null;
  if (!contentType?.includes('application/json')) {
    // A refusal inside an event stream is an error event in the same shape.
    if (contentType?.includes('text/event-stream')) return /"error":\{"code":"[a-z_]+","message":/.test(text) ? null : `stream error not in shape: ${text.slice(0, 200)}`;
    return `status ${status} with content-type ${contentType}: ${text.slice(0, 200)}`;
  }
  try {
    const b = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } };
    if (typeof b.error?.code === 'string' && typeof b.error.message === 'string') return null;
  } catch {
    /* below */
  }
  return `status ${status}, error not in shape: ${text.slice(0, 200)}`;
}

/** Sends one generated request over real HTTP; returns a problem or null. */
export async function send(url: string, r: FuzzRequest, timeoutMs = 120_000): Promise<{ status: number; problem: string | null }> {
  const res = await fetch(url + r.path, { method: r.method, headers: r.headers, body: r.method === 'GET' || r.method === 'HEAD' ? undefined : r.body, signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  return { status: res.status, problem: checkResponse(res.status, res.headers.get('content-type'), text, r.method) };
}

export interface FuzzReport {
  sent: number;
  statuses: Record<number, number>;
  problems: { index: number; request: string; problem: string }[];
}

/** Sends `count` requests drawn from `seed`, `concurrency` at a time; collects every response that breaks the contract. */
export async function fuzz(url: string, o: FuzzOptions & { count: number; seed: number; concurrency: number }): Promise<FuzzReport> {
  const all = fc.sample(requests(o), { numRuns: o.count, seed: o.seed });
  const report: FuzzReport = { sent: 0, statuses: {}, problems: [] };
  let next = 0;
  await Promise.all(
    Array.from({ length: o.concurrency }, async () => {
      while (next < all.length) {
        const index = next++;
        const r = all[index];
        let status = 0;
        let problem: string | null;
        try {
          ({ status, problem } = await send(url, r));
        } catch (e) {
          problem = `no response: ${(e as Error).message} ${(e as { cause?: Error }).cause?.message ?? ''}`;
        }
        report.sent++;
        report.statuses[status] = (report.statuses[status] ?? 0) + 1;
        if (problem) report.problems.push({ index, request: `${r.method} ${r.path} ${JSON.stringify(r.headers)} ${String(r.body).slice(0, 300)}`, problem });
      }
    }),
  );
  return report;
}
