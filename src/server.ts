import type { FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import { Registry } from './adapters/registry.js';
import type { Config } from './config.js';
import { Engine } from './engine/engine.js';
import { Inference } from './engine/inference.js';
import { Executor } from './executor/executor.js';
import { buildApp } from './http/app.js';
import { loadBaseModel, type BaseModel } from './model/base-model.js';

export interface Server {
  app: FastifyInstance;
  model: BaseModel;
  registry: Registry;
  engine: Engine;
  executor: Executor;
  inference: Inference;
  log: Logger;
  close: () => Promise<void>;
}

/** Composition root: config → model → registry → executor → engine → HTTP. */
export async function createServer(config: Config, log: Logger = pino({ level: config.logLevel })): Promise<Server> {
  const t0 = performance.now();
  const model = loadBaseModel(config.modelDir, config.cacheDir);
  log.info({ model: config.modelDir, layers: model.config.layers, hidden: model.config.hidden, graph: model.graphPath, graphBuilt: model.graphBuilt }, 'base model loaded');
  const registry = new Registry(model, log);
  registry.loadDirectory(config.adaptersDir);
  const executor = new Executor({ graphPath: model.graphPath, base: model.tensors, provider: config.executionProvider, threads: config.intraOpThreads, spin: config.spinThreads });
  await executor.ready();
  log.info({ provider: config.executionProvider, ms: Math.round(performance.now() - t0) }, 'inference worker ready');
  const engine = new Engine(executor, { ...config, maxWorkerAdapters: 512 }, log);
  executor.on('error', (e: Error) => log.error({ err: e.message }, 'inference worker failed to restart'));
  engine.start();
  const inference = new Inference(engine, model, registry, config.requestTimeoutMs);
  let ready = true;
  const app = await buildApp({
    logger: log,
    inference,
    engine,
    registry,
    bodyLimitBytes: config.bodyLimitBytes,
    readiness: () => ({ ready, details: { model: model.config.modelType, adapters: registry.list().length, provider: config.executionProvider } }),
  });
  const close = async () => {
    ready = false;
    await app.close();
    await engine.stop();
    await executor.close();
  };
  return { app, model, registry, engine, executor, inference, log, close };
}
