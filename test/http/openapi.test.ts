import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { ROOT, startServer } from '../helpers.js';

const server = await startServer({ ADMIN_TOKEN: 'unused' });
t.teardown(() => server.close());

t.test('the committed openapi/openapi.json is what the server serves (run npm run openapi)', async (t) => {
  const served = (await server.app.inject('/openapi.json')).json();
  const committed = JSON.parse(readFileSync(join(ROOT, 'openapi', 'openapi.json'), 'utf8'));
  t.same(served, committed);
});

t.test('every route of the contract is documented with request and response schemas', async (t) => {
  const spec = (await server.app.inject('/openapi.json')).json();
  const routes: [string, string][] = [
    ['/v1/tasks/{task}/generate', 'post'], ['/v1/tasks/{task}/classify', 'post'], ['/v1/tasks/{task}/score', 'post'],
    ['/v1/completions', 'post'], ['/v1/adapters/{task}', 'put'], ['/v1/adapters', 'get'], ['/v1/adapters/{task}', 'get'],
    ['/v1/adapters/{task}', 'delete'], ['/healthz', 'get'], ['/readyz', 'get'], ['/metrics', 'get'],
  ];
  for (const [path, method] of routes) {
    const op = spec.paths[path]?.[method];
    t.ok(op, `${method.toUpperCase()} ${path}`);
    t.ok(op?.responses && Object.keys(op.responses).length > 0, `${method.toUpperCase()} ${path} has responses`);
    if (method === 'post') t.ok(op?.requestBody, `${path} has a request body schema`);
  }
  t.equal((await server.app.inject('/docs')).statusCode < 400, true, 'Swagger UI is served at /docs');
});
