import { cpus } from 'node:os';

export interface Config {
  port: number;
  host: string;
  modelDir: string;
  /** CHAT_TEMPLATE: a Jinja file that replaces the model's chat template (or gives it one). */
  chatTemplate: string | undefined;
  /** CHAT_MESSAGE_SPECIAL_TOKENS=match: a chat message may write special tokens (refused by default). */
  chatSpecialTokens: boolean;
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
  /** A Redis command unanswered this long fails (503 store_unavailable) and marks the store degraded. */
  redisCommandTimeoutMs: number;
  intraOpThreads: number;
  workers: number;
  spinThreads: boolean;
  /** Soft prompts' KV computed once per adapter version (PROMPT_KV_CACHE=on); off prefills them with every request (benchmarks). */
  promptKvCache: boolean;
  rateLimitPerMinute: number;
  /** Whose X-Forwarded-For to believe: false (none), true (any), or addresses/CIDRs/`loopback`… */
  trustProxy: boolean | string[];
  /** How often a replica compares its registry with the shared index (0: only on reconnect). */
  reconcileIntervalMs: number;
  metricsMaxTasks: number;
  shutdownDeadlineMs: number;
  stepTimeoutMs: number;
  maxScoreTokens: number;
}

/** An environment variable that cannot be used; main.ts prints its message as one line and exits 1. */
export class ConfigError extends Error {
  readonly code = 'invalid_config';
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** The largest delay a Node timer takes; beyond it setTimeout fires after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** A decimal integer (no hex, exponent or fraction: `1e3` and `0x1F` are typos here, not numbers). */
function int(env: NodeJS.ProcessEnv, name: string, fallback: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const v = Number(raw.trim());
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new ConfigError(`${name} must be an integer from ${min} to ${max === Number.MAX_SAFE_INTEGER ? '∞' : max}, got '${raw}'`);
  }
  return v;
}

/** One of a fixed set of words; a typo fails at start instead of silently meaning the default. */
function oneOf<T extends string>(env: NodeJS.ProcessEnv, name: string, allowed: readonly T[], fallback: T): T {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const v = raw.trim().toLowerCase();
  if (!(allowed as readonly string[]).includes(v)) throw new ConfigError(`${name} must be one of ${allowed.join(', ')}, got '${raw}'`);
  return v as T;
}

const PROXY_WORD = /^(loopback|linklocal|uniquelocal|[0-9a-f.:]+(\/\d{1,3})?)$/i;

/** TRUST_PROXY: `true`, `false`, or a comma-separated list of proxy addresses, CIDRs or proxy-addr names. */
function trustProxy(env: NodeJS.ProcessEnv): boolean | string[] {
  const raw = (env.TRUST_PROXY ?? '').trim();
  if (raw === '' || raw.toLowerCase() === 'false') return false;
  if (raw.toLowerCase() === 'true') return true;
  const list = raw.split(',').map((s) => s.trim()).filter(Boolean);
  const bad = list.find((s) => !PROXY_WORD.test(s));
  if (bad !== undefined || list.length === 0) {
    throw new ConfigError(`TRUST_PROXY must be true, false or a comma-separated list of addresses, CIDRs, loopback, linklocal or uniquelocal; got '${raw}'`);
  }
  return list;
}

/**
 * Two workers by default: while one waits for the event loop between steps, the other computes.
 * Measured on 2 cores (bench/mixed-batching.ts): 2 workers × 1 thread beat 1 × 2 by about 20%.
 * Threads per worker stay cores / WORKERS: giving each session every core (2 × 2 on 2 cores)
 * measured slower at 1 client and faster at 32 only on a machine shared with other load, where
 * more threads take more of it (bench/lanes.ts; README, Configuration).
 */
function defaultWorkers(env: NodeJS.ProcessEnv): number {
  return int(env, 'WORKERS', Math.min(2, cpus().length), 1);
}

/**
 * ADMIN_TOKEN: unset, one is generated at start; set, it must hold a token. Set but blank (a
 * Kubernetes Secret with an empty value) would otherwise mean a different generated token on
 * every replica.
 */
function adminToken(env: NodeJS.ProcessEnv): string | undefined {
  if (env.ADMIN_TOKEN === undefined) return undefined;
  const token = env.ADMIN_TOKEN.trim();
  if (token === '') throw new ConfigError('ADMIN_TOKEN is set but blank; set a token, or unset it to have one generated');
  return token;
}

/** API_TOKENS: unset or empty, inference is open; set to a list, it must name at least one token. */
function apiTokens(env: NodeJS.ProcessEnv): string[] {
  const raw = env.API_TOKENS ?? '';
  const tokens = raw.split(',').map((t) => t.trim()).filter(Boolean);
  if (raw.trim() !== '' && tokens.length === 0) throw new ConfigError(`API_TOKENS names no token ('${raw}'); unset it to leave inference open`);
  return tokens;
}

/** Reads and validates the environment once; the result is frozen and handed out in slices. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Readonly<Config> {
  const provider = oneOf(env, 'EXECUTION_PROVIDER', ['cpu', 'webgpu'], 'cpu');
  return Object.freeze({
    port: int(env, 'PORT', 8080, 0, 65535),
    host: env.HOST?.trim() || '127.0.0.1',
    modelDir: env.MODEL_DIR ?? 'models/demo-gpt2',
    chatTemplate: env.CHAT_TEMPLATE || undefined,
    chatSpecialTokens: oneOf(env, 'CHAT_MESSAGE_SPECIAL_TOKENS', ['refuse', 'match'], 'refuse') === 'match',
    adaptersDir: env.ADAPTERS_DIR ?? 'adapters',
    cacheDir: env.CACHE_DIR ?? '.cache',
    redisUrl: env.REDIS_URL || undefined,
    adminToken: adminToken(env),
    apiTokens: apiTokens(env),
    executionProvider: provider,
    logLevel: oneOf(env, 'LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info'),
    maxBatchSize: int(env, 'MAX_BATCH_SIZE', 64, 1),
    maxBatchTokens: int(env, 'MAX_BATCH_TOKENS', 4096, 16),
    maxQueue: int(env, 'MAX_QUEUE', 1024, 1),
    batchWaitMs: int(env, 'BATCH_WAIT_MS', 2, 0, 1000),
    batchPolicy: oneOf(env, 'BATCH_POLICY', ['mixed', 'same-task'], 'mixed'),
    requestTimeoutMs: int(env, 'REQUEST_TIMEOUT_MS', 60_000, 1, MAX_TIMER_MS),
    bodyLimitBytes: int(env, 'BODY_LIMIT_BYTES', 1024 * 1024, 1024),
    maxPromptChars: int(env, 'MAX_PROMPT_CHARS', 100_000, 1),
    maxAdapterBytes: int(env, 'MAX_ADAPTER_BYTES', 64 * 1024 * 1024, 1024),
    adapterCacheBytes: int(env, 'ADAPTER_CACHE_BYTES', 256 * 1024 * 1024, 1),
    redisPrefix: env.REDIS_PREFIX ?? 'sps:',
    redisCommandTimeoutMs: int(env, 'REDIS_COMMAND_TIMEOUT_MS', 10_000, 100, MAX_TIMER_MS),
    workers: defaultWorkers(env),
    intraOpThreads: int(env, 'INTRA_OP_THREADS', Math.max(1, Math.floor(cpus().length / defaultWorkers(env))), 1),
    spinThreads: env.ORT_SPIN === '1',
    promptKvCache: oneOf(env, 'PROMPT_KV_CACHE', ['on', 'off'], 'on') === 'on',
    rateLimitPerMinute: int(env, 'RATE_LIMIT_PER_MINUTE', 0),
    trustProxy: trustProxy(env),
    reconcileIntervalMs: int(env, 'RECONCILE_INTERVAL_MS', 30_000, 0, MAX_TIMER_MS),
    metricsMaxTasks: int(env, 'METRICS_MAX_TASKS', 100, 1),
    shutdownDeadlineMs: int(env, 'SHUTDOWN_DEADLINE_MS', 30_000, 0, MAX_TIMER_MS),
    // A step this long means a hung worker: it is terminated and restarted (its rows get 503).
    stepTimeoutMs: int(env, 'STEP_TIMEOUT_MS', 60_000, 100, MAX_TIMER_MS),
    // Tokens one score/classify request may score (inputs × labels × tokens each); 413 beyond.
    maxScoreTokens: int(env, 'MAX_SCORE_TOKENS', 131_072, 1),
  });
}
