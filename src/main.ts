import { loadConfig } from './config.js';
import { createServer } from './server.js';
import { pino } from 'pino';

const config = loadConfig();
const log = pino({ level: config.logLevel });
try {
  const server = await createServer(config, log);
  await server.app.listen({ port: config.port, host: config.host });
  const shutdown = async (signal: string) => {
    log.info({ signal, deadlineMs: config.shutdownDeadlineMs }, 'shutting down: finishing admitted requests');
    await server.close(config.shutdownDeadlineMs);
    log.info('shut down');
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
} catch (e) {
  log.fatal({ err: (e as Error).message }, 'failed to start');
  process.exit(1);
}
