import { ConfigError, loadConfig, type Config } from './config.js';
import { createServer } from './server.js';
import { pino } from 'pino';

// A bad environment variable is a user's typo, not a crash: one line naming it, exit 1, no stack trace.
let config: Readonly<Config>;
try {
  config = loadConfig();
} catch (e) {
  if (!(e instanceof ConfigError)) throw e;
  process.stderr.write(`softprompt-server: invalid configuration: ${e.message}\n`);
  process.exit(1);
}
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
