import { cpus } from 'node:os';

export interface Config {
  port: number;
  host: string;
  modelDir: string;
  adaptersDir: string;
  cacheDir: string;
  redisUrl: string | undefined;
  adminToken: string | undefined;
  apiTokens: string[];
  executionProvider: 'cpu' | 'webgpu';
  logLevel: string;
  maxBatchSize: number;
  maxBatchTokens: number;
  maxQueue: number;
  batchWaitMs: number;
  batchPolicy: 'mixed' | 'same-task';
  requestTimeoutMs: number;
  bodyLimitBytes: number;
  maxPromptChars: number;
  maxAdapterBytes: number;
  adapterCacheBytes: number;
  redisPrefix: string;
  intraOpThreads: number;
  workers: number;
  spinThreads: boolean;
  rateLimitPerMinute: number;
  metricsMaxTasks: number;
  shutdownDeadlineMs: number;
}

function int(env: NodeJS.ProcessEnv, name: string, fallback: number, min = 0): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < min) throw new Error(`${name} must be an integer ≥ ${min}, got '${raw}'`);
  return v;
}

/**
 * Two workers by default: while one waits for the event loop between steps, the other computes.
 * Measured on 2 cores (bench/mixed-batching.ts): 2 workers × 1 thread beat 1 × 2 by about 20%.
 */
function defaultWorkers(env: NodeJS.ProcessEnv): number {
  return int(env, 'WORKERS', Math.min(2, cpus().length), 1);
}

/** Reads and validates the environment once; the result is frozen and handed out in slices. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Readonly<Config> {
  const provider = (env.EXECUTION_PROVIDER ?? 'cpu').toLowerCase();
  if (provider !== 'cpu' && provider !== 'webgpu') throw new Error(`EXECUTION_PROVIDER must be cpu or webgpu, got '${provider}'`);
  return Object.freeze({
    port: int(env, 'PORT', 8080),
    host: env.HOST ?? '127.0.0.1',
    modelDir: env.MODEL_DIR ?? 'models/demo-gpt2',
    adaptersDir: env.ADAPTERS_DIR ?? 'adapters',
    cacheDir: env.CACHE_DIR ?? '.cache',
    redisUrl: env.REDIS_URL || undefined,
    adminToken: env.ADMIN_TOKEN || undefined,
    apiTokens: (env.API_TOKENS ?? '').split(',').map((t) => t.trim()).filter(Boolean),
    executionProvider: provider,
    logLevel: env.LOG_LEVEL ?? 'info',
    maxBatchSize: int(env, 'MAX_BATCH_SIZE', 64, 1),
    maxBatchTokens: int(env, 'MAX_BATCH_TOKENS', 4096, 16),
    maxQueue: int(env, 'MAX_QUEUE', 1024, 1),
    batchWaitMs: int(env, 'BATCH_WAIT_MS', 2),
    batchPolicy: env.BATCH_POLICY === 'same-task' ? 'same-task' : 'mixed',
    requestTimeoutMs: int(env, 'REQUEST_TIMEOUT_MS', 60_000, 1),
    bodyLimitBytes: int(env, 'BODY_LIMIT_BYTES', 1024 * 1024, 1024),
    maxPromptChars: int(env, 'MAX_PROMPT_CHARS', 100_000, 1),
    maxAdapterBytes: int(env, 'MAX_ADAPTER_BYTES', 64 * 1024 * 1024, 1024),
    adapterCacheBytes: int(env, 'ADAPTER_CACHE_BYTES', 256 * 1024 * 1024, 1),
    redisPrefix: env.REDIS_PREFIX ?? 'sps:',
    workers: defaultWorkers(env),
    intraOpThreads: int(env, 'INTRA_OP_THREADS', Math.max(1, Math.floor(cpus().length / defaultWorkers(env))), 1),
    spinThreads: env.ORT_SPIN === '1',
    rateLimitPerMinute: int(env, 'RATE_LIMIT_PER_MINUTE', 0),
    metricsMaxTasks: int(env, 'METRICS_MAX_TASKS', 100, 1),
    shutdownDeadlineMs: int(env, 'SHUTDOWN_DEADLINE_MS', 30_000),
  });
}
