import OpenAI from 'openai';
import t from 'tap';
import { startServer } from '../helpers.js';

const server = await startServer();
t.teardown(() => server.close());
await server.app.listen({ port: 0, host: '127.0.0.1' });
const port = (server.app.server.address() as { port: number }).port;
const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'unused' });

t.test('the official openai client lists every task as a model, base included', async (t) => {
  const ids: string[] = [];
  for await (const m of client.models.list()) ids.push(m.id);
  const tasks = server.registry.list().map((a) => a.task);
  t.same(ids.sort(), ['base', ...tasks].sort());
  const prefix = await client.models.retrieve('define-prefix');
  t.equal(prefix.owned_by, 'softprompt-server');
  t.match(prefix, { peft_type: 'PREFIX_TUNING', version: (await server.registry.describe('define-prefix')).version });
  t.match(await client.models.retrieve('base'), { id: 'base', peft_type: null });
  const err = await client.models.retrieve('nope').catch((e: { status?: number }) => e);
  t.equal((err as { status?: number }).status, 404);
});
