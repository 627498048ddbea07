import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { logSoftmax, multipart, refLogits, startServer } from '../helpers.js';
import { LLAMA_FIXTURES, LLAMA_MODELS, servedCases, type LlamaCase } from './reference.js';

/** A writable copy of a test checkpoint's adapters: uploads in these tests must not touch the fixtures. */
function adaptersCopy(model: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'sps-llama-adapters-'));
  cpSync(join(LLAMA_FIXTURES, model, 'adapters'), dir, { recursive: true });
  return dir;
}

const adapterFiles = (model: string, name: string) => ({
  'adapter_config.json': readFileSync(join(LLAMA_FIXTURES, model, 'adapters', name, 'adapter_config.json')),
  'adapter_model.safetensors': readFileSync(join(LLAMA_FIXTURES, model, 'adapters', name, 'adapter_model.safetensors')),
});

for (const name of LLAMA_MODELS) {
  t.test(`${name} through HTTP`, async (t) => {
    const server = await startServer({ MODEL_DIR: join(LLAMA_FIXTURES, name), ADAPTERS_DIR: adaptersCopy(name), ADMIN_TOKEN: 'admin' });
    t.teardown(() => server.close());
    const cases = servedCases(name);

    const generate = async (c: LlamaCase) => {
      const res = await server.app.inject({
        method: 'POST',
        url: `/v1/tasks/${c.adapter ?? 'base'}/generate`,
        payload: { prompt: c.text, raw: true, max_tokens: 20, temperature: 0, logprobs: 5 },
      });
      return { status: res.statusCode, body: res.json() };
    };
    const check = (t: { equal: Function; same: Function; ok: Function }, c: LlamaCase, status: number, body: any) => {
      const label = `${c.adapter ?? 'base'} ${JSON.stringify(c.text)}`;
      t.equal(status, 200, label);
      t.same(body.token_ids, c.greedy, `${label}: greedy tokens`);
      t.equal(body.usage.prompt_tokens, c.ids.length, `${label}: prompt tokens`);
      const expected = logSoftmax(refLogits(c));
      const top = body.logprobs[0].top as { token_id: number; logprob: number }[];
      t.same(top.map((x) => x.token_id), c.top5, `${label}: top-5 ids`);
      for (const x of top) t.ok(Math.abs(x.logprob - expected[x.token_id]) <= 1e-4 * Math.max(1, Math.abs(expected[x.token_id])), `${label}: logprob of ${x.token_id}`);
    };

    const ready = (await server.app.inject({ url: '/readyz' })).json();
    t.equal(ready.model, name === 'tiny-llama' ? 'llama' : 'qwen2');
    const listed = (await server.app.inject({ url: '/v1/adapters', headers: { authorization: 'Bearer admin' } })).json();
    for (const kind of ['prompt', 'prefix', 'lora', 'ia3']) t.ok(JSON.stringify(listed).includes(`"${name}-${kind}"`), `the ${kind} adapter is registered`);

    t.test('every served case, one request at a time', async (t) => {
      for (const c of cases) {
        const { status, body } = await generate(c);
        check(t, c, status, body);
      }
    });

    t.test('every served case at once, twice over: mixed tasks share batches', async (t) => {
      const twice = [...cases, ...cases];
      const results = await Promise.all(twice.map(generate));
      twice.forEach((c, i) => check(t, c, results[i].status, results[i].body));
    });

    if (name === 'tiny-llama') {
      t.test('uploads that do not fit the model are refused with the reason, and change nothing', async (t) => {
        const upload = (task: string, files: Record<string, Buffer>) => {
          const body = multipart(files);
          return server.app.inject({ method: 'PUT', url: `/v1/adapters/${task}`, payload: body.payload, headers: { ...body.headers, authorization: 'Bearer admin' } });
        };
        const bitfit = await upload('llama-bitfit', adapterFiles('tiny-qwen2', 'tiny-qwen2-bitfit'));
        t.equal(bitfit.statusCode, 400);
        t.equal(bitfit.json().error.code, 'invalid_adapter');
        t.match(bitfit.json().error.message, /the base model \(llama\) has no bias parameters/);
        // tiny-qwen2's prefix has 1 key/value head of 32: tiny-llama's has 2.
        const prefix = await upload('llama-prefix', adapterFiles('tiny-qwen2', 'tiny-qwen2-prefix'));
        t.equal(prefix.statusCode, 400);
        t.match(prefix.json().error.message, /token_dim 32 differs from the base model's key\/value width 64/);
        for (const task of ['llama-bitfit', 'llama-prefix']) t.equal((await server.app.inject({ url: `/v1/tasks/${task}/generate`, method: 'POST', payload: { prompt: 'x' } })).statusCode, 404);
      });
    }
  });
}

t.test('a config the server cannot serve fails at start, naming what', async (t) => {
  const cfg = JSON.parse(readFileSync(join(LLAMA_FIXTURES, 'tiny-llama', 'config.json'), 'utf8'));
  const bad = (over: Record<string, unknown>) => {
    const dir = mkdtempSync(join(tmpdir(), 'sps-bad-model-'));
    cpSync(join(LLAMA_FIXTURES, 'tiny-llama'), dir, { recursive: true });
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, ...over }));
    return startServer({ MODEL_DIR: dir });
  };
  await t.rejects(bad({ rope_scaling: { type: 'dynamic', factor: 2 } }), { message: "unsupported rope_scaling type 'dynamic' (supported: linear, llama3)" });
  await t.rejects(bad({ hidden_act: 'gelu_pytorch_tanh' }), { message: "unsupported hidden_act 'gelu_pytorch_tanh' (supported: silu)" });
});
