/** Writes the OpenAPI document the server serves at /openapi.json to openapi/openapi.json. */
import { mkdirSync, writeFileSync } from 'node:fs';
import { pino } from 'pino';
import { loadConfig } from '../config.js';
import { createServer } from '../server.js';

const server = await createServer(loadConfig({ ...process.env, ADMIN_TOKEN: 'unused' }), pino({ level: 'warn' }));
await server.app.ready();
mkdirSync('openapi', { recursive: true });
writeFileSync('openapi/openapi.json', `${JSON.stringify(server.app.swagger(), null, 2)}\n`);
await server.close();
console.log('wrote openapi/openapi.json');
