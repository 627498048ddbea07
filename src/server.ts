import type { FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { FsStore } from './adapters/fs-store.js';
import { RedisStore } from './adapters/redis-store.js';
import { Registry } from './adapters/registry.js';
import type { AdapterStore } from './adapters/store.js';
import type { Config } from './config.js';
import { Engine } from './engine/engine.js';
import { Inference } from './engine/inference.js';
import { Executor } from './executor/executor.js';
import { prefillRunCost } from './executor/prefill.js';
import { buildApp } from './http/app.js';
import { Metrics } from './metrics.js';
import { loraStackBytesPerRank } from './model/adapter-ops.js';
import { loadBaseModel, type BaseModel } from './model/base-model.js';
import { ChatTemplate } from './tokenizer/chat-template.js';

export interface Server {
  app: FastifyInstance;
  model: BaseModel;
  registry: Registry;
  engine: Engine;
  executors: Executor[];
  inference: Inference;
  log: Logger;
  adminToken: string;
  close: (deadlineMs?: number) => Promise<void>;
}

/** Composition root: config → model → registry → executor → engine → HTTP. */
export async function createServer(config: Config, log: Logger = pino({ level: config.logLevel })): Promise<Server> {
  const t0 = performance.now();
  const model = loadBaseModel(config.modelDir, config.cacheDir, { maxChars: config.maxPromptChars });
  log.info({ model: config.modelDir, layers: model.config.layers, hidden: model.config.hidden, graph: model.graphPath, graphBuilt: model.graphBuilt }, 'base model loaded');
  const store = await openStore(config, log);
  const registry = new Registry(model, store, log, config.adapterCacheBytes);
  // Validate every stored adapter at start: a folder may hold files copied in by hand, and Redis
  // what an older, laxer version accepted. A bad one is logged and skipped.
  await registry.sync(true);
  if (store.name === 'redis') {
    // ADAPTERS_DIR seeds a new registry only: seeding whatever the index lacked at every start put
    // back, at each restart or scale-up, the shipped adapters an admin had deleted.
    if (store.createdEpoch) await seedFromFolder(registry, store, config.adaptersDir, log);
    // A Redis that comes back empty: replicas keep what they hold and put ADAPTERS_DIR back.
    registry.onStoreReset = () => seedFromFolder(registry, store, config.adaptersDir, log);
  }
  registry.follow(config.reconcileIntervalMs);
  const adminToken = config.adminToken ?? randomBytes(24).toString('base64url');
  // On stderr whatever LOG_LEVEL says: at `error` the warning would hide the only copy of the token.
  if (!config.adminToken) process.stderr.write(`softprompt-server: ADMIN_TOKEN is not set: generated one for this process (shown once): ${adminToken}\n`);
  const executors = Array.from({ length: config.workers }, () => new Executor({ graphPath: model.graphPath, baseGraphPath: model.baseGraphPath, base: model.tensors, provider: config.executionProvider, threads: config.intraOpThreads, spin: config.spinThreads, promptKv: config.promptKvCache, adapterBytes: config.adapterCacheBytes }));
  await Promise.all(executors.map((e) => e.ready()));
  log.info({ provider: config.executionProvider, workers: config.workers, threads: config.intraOpThreads, ms: Math.round(performance.now() - t0) }, 'inference workers ready');
  // The scheduler budgets a step's prefill by what the workers compute, which depends on their runs.
  const engine = new Engine(executors, { ...config, maxWorkerAdapters: 512, maxWorkerAdapterBytes: config.adapterCacheBytes, loraStackBytesPerRank: loraStackBytesPerRank(model.config), prefillRunCost: prefillRunCost(config.executionProvider) }, log);
  for (const e of executors) e.on('error', (err: Error) => log.error({ err: err.message }, 'inference worker failed to restart'));
  engine.start();
  const metrics = new Metrics(config.metricsMaxTasks, {
    queueDepth: () => engine.queueDepth,
    running: () => engine.running,
    adapters: () => registry.size,
    cache: () => registry.cacheStats,
    kv: () => engine.lanes.map((l) => l.kv),
    workerAdapters: () => engine.lanes.map((l) => l.heldAdapters),
    storeResets: () => registry.storeResets,
  });
  engine.onStep = ({ plan, result }) => {
    metrics.step(
      plan.decode.length + plan.prefill.length + plan.score.length,
      plan.decode.length + plan.prefill.reduce((n, p) => n + p.tokens.length, 0) + plan.score.reduce((n, s) => n + s.context.length + s.targets.length, 0),
      result.kvCopiedBytes,
    );
    metrics.promptKvLookups(result.promptKv);
    const { run: runMs, total: totalMs } = result.ms;
    metrics.stepDetail({ runMs, totalMs, decode: plan.decode.length, prefill: plan.prefill.length, score: plan.score.length, paddedTokens: result.paddedTokens ?? 0 });
  };
  const chat = ChatTemplate.load(config.modelDir, model.tokenizer, { override: config.chatTemplate, allowSpecialTokens: config.chatSpecialTokens });
  if (chat.template) log.info({ source: chat.template.source }, 'chat template loaded: /v1/chat/completions is on');
  else log.info({ reason: chat.reason }, 'no chat template: /v1/chat/completions answers 400');
  const inference = new Inference(engine, model, registry, config.requestTimeoutMs, metrics, chat);
  let ready = true;
  const app = await buildApp({
    logger: log,
    inference,
    engine,
    registry,
    model,
    bodyLimitBytes: config.bodyLimitBytes,
    adminToken,
    apiTokens: config.apiTokens,
    rateLimitPerMinute: config.rateLimitPerMinute,
    trustProxy: config.trustProxy,
    metrics,
    maxAdapterBytes: config.maxAdapterBytes,
    requestTimeoutMs: config.requestTimeoutMs,
    readiness: () => ({
      ready: ready && (registry.synced || store.name === 'redis'),
      details: {
        model: model.config.modelType,
        provider: config.executionProvider,
        adapters: registry.size,
        store: store.name,
        // A shared store that is away: serving goes on from memory, admin writes get 503.
        degraded: !registry.synced,
      },
    }),
  });
  /** Graceful: stop admitting (503 shutting_down), let admitted requests finish up to the deadline, then close. */
  const close = async (deadlineMs = 0) => {
    const deadline = performance.now() + deadlineMs;
    ready = false;
    registry.refuseWrites();
    const drained = await engine.drain(deadlineMs);
    if (!drained) log.warn({ deadlineMs }, 'shutdown deadline reached with requests still running');
    registry.stop();
    await engine.stop();
    // Responses still being written get what is left of the deadline; then every connection is
    // closed. app.close() alone waits for connections in the middle of a request (a body or headers
    // a client left half-sent), which would keep the process from ever exiting. Meanwhile keep-alive
    // connections that fall idle are closed as they do (Node closes idle ones only once, at close).
    const closing = app.close();
    const sweep = setInterval(() => app.server.closeIdleConnections(), 100);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closing, new Promise((r) => (timer = setTimeout(r, Math.max(0, deadline - performance.now()))))]);
    clearTimeout(timer);
    clearInterval(sweep);
    app.server.closeAllConnections();
    await closing;
    await Promise.all(executors.map((e) => e.close()));
    await store.close();
    await model.tokenizer.close();
    chat.template?.close();
    metrics.close();
  };
  return { app, model, registry, engine, executors, inference, log, close, adminToken };
}

async function openStore(config: Config, log: Logger): Promise<AdapterStore> {
  if (!config.redisUrl) return new FsStore(config.adaptersDir);
  const store = new RedisStore(config.redisUrl, config.redisPrefix, log, config.redisCommandTimeoutMs);
  await store.connect();
  log.info({ prefix: config.redisPrefix }, 'adapter store: redis');
  return store;
}

/** A shared store starts empty: give it the adapters of ADAPTERS_DIR that it does not have yet. */
async function seedFromFolder(registry: Registry, store: AdapterStore, dir: string, log: Logger): Promise<void> {
  if (!existsSync(dir)) return;
  const have = new Set((await store.index()).map((m) => m.task));
  const folder = new FsStore(dir);
  for (const { task } of await folder.index()) {
    if (have.has(task)) continue;
    try {
      const stored = await folder.load(task);
      if (stored) await registry.upload(task, stored.files);
    } catch (e) {
      log.warn({ task, reason: (e as Error).message }, 'adapter not seeded into redis');
    }
  }
}
