import { randomInt } from 'node:crypto';
import { ServerError } from '../errors.js';
import type { BaseModel } from '../model/base-model.js';
import type { Registry, ResolvedTask } from '../adapters/registry.js';
import { applyTemplate, checkLabels, checkTemplate } from '../adapters/task-spec.js';
import { FormatError } from '../errors.js';
import type { AdapterTensors, TokenChoice } from '../protocol.js';
import type { Metrics } from '../metrics.js';
import type { Engine } from './engine.js';
import type { GenerateJob } from './jobs.js';

export interface GenerateParams {
  prompt: string;
  raw?: boolean;
  max_tokens?: number;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  seed?: number;
  stop?: string[];
  logprobs?: number;
  ignore_eos?: boolean;
}

export interface GenerateResult {
  task: string;
  adapter_version: string;
  text: string;
  token_ids: number[];
  finish_reason: 'stop' | 'length';
  usage: { prompt_tokens: number; completion_tokens: number };
  logprobs?: { token_id: number; logprob: number; top: { token_id: number; logprob: number }[] }[];
}

export interface RequestControl {
  signal?: AbortSignal;
  /** Streaming: called with each token and the text it completes (whole UTF-8 characters only). */
  onToken?: (tokenId: number, text: string) => void;
}

/**
 * Turns validated HTTP bodies into engine jobs and job outcomes into response bodies: templates,
 * tokenisation, context checks, stop strings, timeouts and cancellation live here.
 */
export class Inference {
  constructor(
    private readonly engine: Engine,
    private readonly model: BaseModel,
    private readonly registry: Registry,
    private readonly timeoutMs: number,
    private readonly metrics: Metrics | null = null,
  ) {}

  /** A token's text on its own (a partial UTF-8 character shows as U+FFFD), for OpenAI-style logprobs. */
  tokenText(id: number): string {
    return this.model.tokenizer.tokenText(id);
  }

  private async encodePrompt(text: string, adapter: AdapterTensors | null): Promise<number[]> {
    const tokens = await this.model.tokenizer.encode(text, { addBos: true });
    // Nothing to condition on: start from end-of-text, GPT-2's document separator.
    if (tokens.length === 0 && adapter?.kind !== 'prompt') tokens.push(this.model.tokenizer.eosTokenId);
    return tokens;
  }

  private checkContext(adapter: AdapterTensors | null, tokens: number, extra: number): void {
    const virtual = adapter && adapter.kind !== 'bitfit' ? adapter.virtualTokens : 0;
    const limit = this.model.config.nPositions;
    if (virtual + tokens + extra > limit) {
      throw new ServerError('prompt_too_long', `${tokens} prompt tokens + ${virtual} virtual tokens + ${extra} more exceed the ${limit}-token context`);
    }
  }

  /** Starts a job and bounds it by the request timeout and the client's connection. */
  private track<T>(ctl: RequestControl, start: () => { cancel: () => void; result: Promise<T> }): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const { cancel, result } = start();
      const abort = (err: ServerError) => {
        cancel();
        reject(err);
      };
      const timer = setTimeout(() => abort(new ServerError('request_timeout', `the request did not finish within ${this.timeoutMs} ms`)), this.timeoutMs);
      const onAbort = () => abort(new ServerError('cancelled', 'the client went away'));
      ctl.signal?.addEventListener('abort', onAbort, { once: true });
      result.then(resolve, reject).finally(() => {
        clearTimeout(timer);
        ctl.signal?.removeEventListener('abort', onAbort);
      });
    });
  }

  async generate(task: string, p: GenerateParams, ctl: RequestControl = {}): Promise<GenerateResult> {
    const t: ResolvedTask = await this.registry.resolve(task);
    const adapter = t.adapter?.tensors ?? null;
    const text = p.raw ? p.prompt : applyTemplate(t.spec.promptTemplate, p.prompt);
    const tokens = await this.encodePrompt(text, adapter);
    const maxTokens = p.max_tokens ?? 64;
    this.checkContext(adapter, tokens.length, maxTokens);
    const eos = this.model.tokenizer.eosTokenIds;
    const stops = p.stop ?? [];
    const holdBack = stops.length ? Math.max(...stops.map((s) => s.length)) - 1 : 0;
    const ids: number[] = [];
    const logprobs: NonNullable<GenerateResult['logprobs']> = [];
    const stream = this.model.tokenizer.stream(tokens);
    let out = '';
    let emitted = 0;
    let finishReason: GenerateResult['finish_reason'] = 'length';
    let job!: GenerateJob;
    let lastTokenAt = 0;
    const emit = (tokenId: number, final: boolean) => {
      if (!ctl.onToken) return;
      const upTo = final ? out.length : Math.max(emitted, out.length - holdBack);
      ctl.onToken(tokenId, out.slice(emitted, upTo));
      emitted = upTo;
    };
    const onToken = (c: TokenChoice): 'continue' | 'stop' | 'length' => {
      const now = performance.now();
      if (lastTokenAt === 0) {
        this.metrics?.firstToken(now - job.enqueuedAt);
        if (job.admittedAt !== undefined) this.metrics?.waited(job.admittedAt - job.enqueuedAt);
      } else this.metrics?.nextToken(now - lastTokenAt);
      lastTokenAt = now;
      if (eos.includes(c.token) && !p.ignore_eos) {
        out += stream.flush();
        finishReason = 'stop';
        if (out.length > emitted) emit(-1, true); // text held back for stop strings, with no token of its own
        return 'stop';
      }
      ids.push(c.token);
      if (p.logprobs) logprobs.push({ token_id: c.token, logprob: c.logprob!, top: (c.top ?? []).map((x) => ({ token_id: x.token, logprob: x.logprob })) });
      out += stream.push(c.token);
      const hit = stops.map((s) => out.indexOf(s, Math.max(0, emitted - holdBack))).filter((i) => i >= 0);
      if (hit.length > 0) {
        out = out.slice(0, Math.min(...hit));
        finishReason = 'stop';
        emit(c.token, true);
        return 'stop';
      }
      if (ids.length >= maxTokens) {
        out += stream.flush();
        emit(c.token, true);
        return 'length';
      }
      emit(c.token, false);
      return 'continue';
    };
    return this.track(ctl, () => {
      const result = new Promise<GenerateResult>((resolve, reject) => {
        job = {
          type: 'generate',
          id: this.engine.newJobId(),
          task,
          adapter,
          tokens,
          maxTokens,
          sampling: { temperature: p.temperature ?? 1, topP: p.top_p ?? 1, topK: p.top_k ?? 0, seed: p.seed ?? randomInt(2 ** 47), logprobs: p.logprobs ?? 0 },
          onToken,
          cancelled: false,
          enqueuedAt: performance.now(),
          finish: (err) => {
            this.metrics?.generated(task, ids.length);
            if (err) return reject(err);
            const body: GenerateResult = {
              task,
              adapter_version: t.version,
              text: out,
              token_ids: ids,
              finish_reason: finishReason,
              usage: { prompt_tokens: tokens.length, completion_tokens: ids.length },
            };
            if (p.logprobs) body.logprobs = logprobs;
            resolve(body);
          },
        };
      });
      this.engine.submit(job);
      return { cancel: () => (job.cancelled = true), result };
    });
  }

  /** Log-probabilities of each row's targets after its context, all rows in batched passes. */
  private scoreRows(t: ResolvedTask, rows: { context: number[]; targets: number[] }[], ctl: RequestControl): Promise<number[][]> {
    return this.track(ctl, () => {
      let job!: Parameters<Engine['submit']>[0] & { type: 'score' };
      const result = new Promise<number[][]>((resolve, reject) => {
        job = {
          type: 'score',
          id: this.engine.newJobId(),
          task: t.task,
          adapter: t.adapter?.tensors ?? null,
          rows,
          cancelled: false,
          enqueuedAt: performance.now(),
          done: (lp, err) => (err ? reject(err) : lp ? resolve(lp) : reject(new ServerError('cancelled', 'cancelled'))),
        };
      });
      this.engine.submit(job);
      return { cancel: () => (job.cancelled = true), result };
    });
  }

  async score(task: string, p: { prompt: string; completion: string; raw?: boolean; eos?: boolean; max_length?: number }, ctl: RequestControl = {}) {
    const t = await this.registry.resolve(task);
    const adapter = t.adapter?.tensors ?? null;
    const context = await this.model.tokenizer.encode(p.raw ? p.prompt : applyTemplate(t.spec.promptTemplate, p.prompt), { addBos: true });
    const targets = await this.model.tokenizer.encode(p.completion);
    if (p.eos) targets.push(this.model.tokenizer.eosTokenId);
    if (p.max_length !== undefined) targets.splice(Math.max(0, p.max_length - context.length));
    if (targets.length === 0) throw new ServerError('invalid_request', 'completion has no tokens to score');
    this.checkContext(adapter, context.length + targets.length, 0);
    const [lp] = await this.scoreRows(t, [{ context, targets }], ctl);
    const sum = lp.reduce((a, b) => a + b, 0);
    // With no context and no soft prompt, nothing predicts the first token: it is not counted.
    return { task, adapter_version: t.version, logprob: sum, mean_logprob: lp.length ? sum / lp.length : 0, tokens: lp.length };
  }

  async classify(task: string, p: { input: string | string[]; labels?: string[]; prompt_template?: string }, ctl: RequestControl = {}) {
    const t = await this.registry.resolve(task);
    const adapter = t.adapter?.tensors ?? null;
    const labels = p.labels ?? t.spec.labels;
    if (labels.length === 0) throw new ServerError('not_a_classification_task', `task '${task}' has no labels; pass "labels" in the request`);
    const template = p.prompt_template ?? t.spec.promptTemplate;
    try {
      if (p.labels) checkLabels(p.labels);
      checkTemplate(template);
    } catch (e) {
      throw new ServerError('invalid_request', (e as FormatError).message);
    }
    const inputs = Array.isArray(p.input) ? p.input : [p.input];
    const labelTokens = await Promise.all(labels.map((w) => this.model.tokenizer.encode(' ' + w)));
    const rows: { context: number[]; targets: number[] }[] = [];
    for (const input of inputs) {
      const context = await this.encodePrompt(applyTemplate(template, input), adapter);
      for (const targets of labelTokens) {
        this.checkContext(adapter, context.length + targets.length, 0);
        rows.push({ context, targets });
      }
    }
    const lp = await this.scoreRows(t, rows, ctl);
    const results = inputs.map((_, i) => {
      const scores: Record<string, number> = {};
      labels.forEach((w, j) => (scores[w] = lp[i * labels.length + j].reduce((a, b) => a + b, 0)));
      const label = labels.reduce((best, w) => (scores[w] > scores[best] ? w : best), labels[0]);
      return { label, scores };
    });
    return { task, adapter_version: t.version, results };
  }
}
