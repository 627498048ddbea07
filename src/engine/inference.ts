import { randomInt } from 'node:crypto';
import { ServerError } from '../errors.js';
import type { BaseModel } from '../model/base-model.js';
import type { Registry, ResolvedTask } from '../adapters/registry.js';
import { applyTemplate, checkLabels, checkTemplate } from '../adapters/task-spec.js';
import { FormatError } from '../errors.js';
import type { AdapterTensors, TokenChoice } from '../protocol.js';
import type { Metrics } from '../metrics.js';
import type { ChatMessage, ChatTemplate } from '../tokenizer/chat-template.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { Engine } from './engine.js';
import type { EnsembleMember, GenerateJob, Job, ScoreJob } from './jobs.js';

/**
 * The ids a prompt feeds the model (what generate, score and /v1/tokenize count), with the BOS the
 * tokenizer prepends where it does (Llama); a rendered chat prompt (`chat`) with its special tokens
 * matched and no BOS added. An empty prompt with none has nothing to condition on:
 * it starts from end-of-text, GPT-2's document separator, unless a soft prompt precedes it, whose
 * last position then predicts the first token. Async: long texts are tokenised off the event loop.
 */
export async function promptIds(tokenizer: Tokenizer, text: string, adapter: AdapterTensors | null, chat = false): Promise<number[]> {
  // A rendered chat template writes its own special tokens (BOS too), as transformers tokenises it.
  const tokens = await tokenizer.encode(text, chat ? { special: true } : { addBos: true });
  if (tokens.length === 0 && adapter?.kind !== 'prompt') tokens.push(tokenizer.eosTokenId);
  return tokens;
}

/** A job and the promise its completion settles. */
interface Tracked<T> {
  job: Job;
  result: Promise<T>;
}

export interface GenerateParams {
  prompt: string;
  raw?: boolean;
  /**
   * `prompt` is a rendered chat template (renderChat): its special tokens are matched, no BOS or task
   * template is added, and without `max_tokens` it may run to the end of the context (OpenAI's chat default).
   */
  chat?: boolean;
  max_tokens?: number;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  seed?: number;
  stop?: string[];
  logprobs?: number;
  /** Report each chosen token's log-probability even when `logprobs` asks for no alternatives. */
  chosen_logprob?: boolean;
  /** token id → additive bias (-100..100), applied before sampling. */
  logit_bias?: Record<string, number>;
  /** OpenAI's penalties (-2..2): see Sampling.penalties. */
  presence_penalty?: number;
  frequency_penalty?: number;
  ignore_eos?: boolean;
}

export interface GenerateResult {
  task: string;
  adapter_version: string;
  text: string;
  token_ids: number[];
  finish_reason: 'stop' | 'length';
  usage: { prompt_tokens: number; completion_tokens: number };
  logprobs?: TokenLogprob[];
}

/** A generated token's log-probability and the `logprobs` most likely tokens at its step. */
export interface TokenLogprob {
  token_id: number;
  logprob: number;
  top: { token_id: number; logprob: number }[];
  /** Where the token's text starts in the completion's text (OpenAI's text_offset; not in /generate's response). */
  offset: number;
}

export interface RequestControl {
  signal?: AbortSignal;
  /**
   * Streaming: called with each token and the text it completes (whole UTF-8 characters only), and
   * its log-probabilities when the request asks for them. tokenId -1: text held back for stop
   * strings, with no token of its own.
   */
  onToken?: (tokenId: number, text: string, logprob?: TokenLogprob) => void;
}

/** Control of a request with several prompts: `index` says which prompt a token belongs to. */
export interface BatchControl {
  signal?: AbortSignal;
  onToken?: (index: number, tokenId: number, text: string, logprob?: TokenLogprob) => void;
  /** Streaming: called as each prompt's generation ends, after its last token (OpenAI sends a choice's finish as it happens). */
  onFinish?: (index: number, result: GenerateResult) => void;
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
    private readonly chat: { template: ChatTemplate | null; reason: string } = { template: null, reason: 'no chat template was loaded' },
  ) {}

  /** A conversation for `task` as the prompt text of the model's chat template: 404 for an unknown task, then 400 where the model has none. */
  async renderChat(task: string, messages: ChatMessage[], addGenerationPrompt: boolean, kwargs?: Record<string, unknown>, signal?: AbortSignal): Promise<string> {
    await this.registry.resolve(task);
    if (!this.chat.template) throw new ServerError('invalid_request', this.chat.reason);
    // A render waiting behind others is bounded by the request's time too.
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(new ServerError('request_timeout', `the request did not finish within ${this.timeoutMs} ms`)), this.timeoutMs);
    try {
      return await this.chat.template.render(messages, addGenerationPrompt, kwargs, signal ? AbortSignal.any([signal, timeout.signal]) : timeout.signal);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The ids a prompt feeds (generate, chat, /v1/tokenize): a chat prompt as it is, a raw one, or through the task's template. */
  promptTokens(t: ResolvedTask, p: Pick<GenerateParams, 'prompt' | 'raw' | 'chat'>, adapter: AdapterTensors | null): Promise<number[]> {
    return promptIds(this.model.tokenizer, p.raw || p.chat ? p.prompt : applyTemplate(t.spec.promptTemplate, p.prompt), adapter, p.chat);
  }

  /** A token's bytes as the decoder gives them (OpenAI names a token that is not whole characters by them). */
  tokenBytes(id: number): number[] {
    return this.model.tokenizer.tokenBytes(id);
  }

  /** A token's text on its own (a partial UTF-8 character shows as U+FFFD), for OpenAI-style logprobs. */
  tokenText(id: number): string {
    return this.model.tokenizer.tokenText(id);
  }

  /** OpenAI's logit_bias as [id, bias] pairs, every id checked against the vocabulary. */
  private logitBias(bias: Record<string, number> | undefined): [number, number][] | undefined {
    if (!bias) return undefined;
    const V = this.model.config.vocabSize;
    // Keys are decimal token ids: Number() would also read '', ' 5', '1e2' and '0x10' as some other token.
    const malformed = Object.keys(bias).find((k) => !/^[0-9]{1,10}$/.test(k));
    if (malformed !== undefined) throw new ServerError('invalid_request', `logit_bias keys are token ids in decimal digits; got ${JSON.stringify(malformed)}`);
    const pairs = Object.entries(bias).map(([k, v]): [number, number] => [Number(k), v]);
    const bad = pairs.find(([id]) => id >= V);
    if (bad) throw new ServerError('invalid_request', `logit_bias names token ${bad[0]}, outside the vocabulary (0..${V - 1})`);
    return pairs.length > 0 ? pairs : undefined;
  }

  /** Positions of the context left after a prompt of `tokens` and the adapter's virtual tokens (soft prompt, prefix). */
  private contextLeft(adapter: AdapterTensors | null, tokens: number): number {
    const virtual = adapter && adapter.kind !== 'bitfit' ? adapter.virtualTokens : 0;
    return this.model.config.nPositions - virtual - tokens;
  }

  /** 413 unless a prompt of `tokens` and `extra` positions to generate fit the context. */
  private checkContext(adapter: AdapterTensors | null, tokens: number, extra: number): void {
    const left = this.contextLeft(adapter, tokens);
    if (left < extra) {
      const limit = this.model.config.nPositions;
      const virtual = limit - left - tokens;
      throw new ServerError('prompt_too_long', `${tokens} prompt tokens + ${virtual} virtual tokens${extra > 0 ? ` + ${extra} to generate` : ''} exceed the ${limit}-token context`);
    }
  }

  /**
   * A generate request's max_tokens over its prompts (`rows`: one, or an ensemble's members), each
   * checked against the context: as asked, else a chat's default, up to the end of the context for
   * the row with least room (OpenAI's), else 64.
   */
  private maxTokensFor(p: GenerateParams, rows: { adapter: AdapterTensors | null; tokens: number[] }[]): number {
    const maxTokens = p.max_tokens ?? (p.chat ? Math.max(1, Math.min(...rows.map((r) => this.contextLeft(r.adapter, r.tokens.length)))) : 64);
    for (const r of rows) this.checkContext(r.adapter, r.tokens.length, maxTokens);
    return maxTokens;
  }

  /**
   * Runs the jobs of one request: queued together (all or none: a refusal leaves nothing queued),
   * bounded together by the request timeout and the client's connection, and cancelled together
   * when any of them fails, so that no job of a request already answered goes on running.
   */
  private run<T>(ctl: { signal?: AbortSignal }, jobs: Tracked<T>[]): Promise<T[]> {
    if (ctl.signal?.aborted) throw new ServerError('cancelled', 'the client went away');
    this.engine.submitAll(jobs.map((j) => j.job));
    return new Promise<T[]>((resolve, reject) => {
      let settled = false;
      const end = (err: Error | null, value?: T[]) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        ctl.signal?.removeEventListener('abort', onAbort);
        if (!err) return resolve(value!);
        for (const { job } of jobs) job.cancelled = true;
        reject(err);
      };
      const timer = setTimeout(() => end(new ServerError('request_timeout', `the request did not finish within ${this.timeoutMs} ms`)), this.timeoutMs);
      const onAbort = () => end(new ServerError('cancelled', 'the client went away'));
      ctl.signal?.addEventListener('abort', onAbort, { once: true });
      Promise.all(jobs.map((j) => j.result)).then(
        (v) => end(null, v),
        (e: Error) => end(e),
      );
    });
  }

  async generate(task: string, p: GenerateParams, ctl: RequestControl = {}): Promise<GenerateResult> {
    const onToken = ctl.onToken;
    const [r] = await this.generateAll(task, [p], { signal: ctl.signal, onToken: onToken && ((_i, id, text, lp) => onToken(id, text, lp)) });
    return r;
  }

  /**
   * Several prompts of one request (OpenAI's prompt arrays): every prompt is tokenised and checked,
   * then all are admitted at once; one refusal refuses the whole request before anything runs.
   */
  async generateAll(task: string, prompts: GenerateParams[], ctl: BatchControl = {}): Promise<GenerateResult[]> {
    const t: ResolvedTask = await this.registry.resolve(task);
    const adapter = t.adapter?.tensors ?? null;
    // The same prompt (OpenAI's n, a chat's choices) is tokenised once per request.
    const ids = new Map<string, Promise<number[]>>();
    const jobs: Tracked<GenerateResult>[] = [];
    for (const [i, p] of prompts.entries()) {
      const key = `${p.chat ? 'chat' : p.raw ? 'raw' : 'task'}:${p.prompt}`;
      if (!ids.has(key)) ids.set(key, this.promptTokens(t, p, adapter));
      const job = await this.prepareGenerate(t, p, [...(await ids.get(key)!)], ctl.onToken && ((id, text, lp) => ctl.onToken!(i, id, text, lp)));
      const onFinish = ctl.onFinish;
      // A throw in the callback must not become an unhandled rejection (the request ends on its own path).
      if (onFinish) job.result.then((r) => onFinish(i, r)).catch(() => {});
      jobs.push(job);
    }
    return this.run(ctl, jobs);
  }

  /**
   * A prompt ensemble's generation: every member task is a row with its own adapter and its own
   * templated prompt; each step one token is chosen from the weighted mean of their next-token
   * distributions and fed to every member. Each member is pinned to the version resolved here.
   */
  async generateEnsemble(tasks: string[], weights: number[], p: GenerateParams, ctl: RequestControl = {}): Promise<GenerateResult & { tasks: string[]; adapter_versions: string[] }> {
    const resolved = await Promise.all(tasks.map((task) => this.registry.resolve(task)));
    const members: EnsembleMember[] = [];
    for (const [k, t] of resolved.entries()) {
      const adapter = t.adapter?.tensors ?? null;
      members.push({ adapter, tokens: await this.promptTokens(t, p, adapter), weight: weights[k] });
    }
    const [r] = await this.run(ctl, [await this.prepareGenerate(resolved[0], p, members[0].tokens, ctl.onToken, members)]);
    return { ...r, tasks, adapter_versions: resolved.map((t) => t.version) };
  }

  /** A generate job over `tokens` (the prompt's ids; an ensemble's first member's, which stands for the request). */
  private async prepareGenerate(t: ResolvedTask, p: GenerateParams, tokens: number[], onText?: RequestControl['onToken'], members?: EnsembleMember[]): Promise<Tracked<GenerateResult>> {
    const task = t.task;
    const adapter = t.adapter?.tensors ?? null;
    const maxTokens = this.maxTokensFor(p, members ?? [{ adapter, tokens }]);
    const logitBias = this.logitBias(p.logit_bias);
    const eos = this.model.tokenizer.eosTokenIds;
    const stops = p.stop ?? [];
    // Half a character would cut one in two, in the text and in a stream.
    if (stops.some((x) => LONE_SURROGATE.test(x))) throw new ServerError('invalid_request', 'a stop string holds half of a character (a lone UTF-16 surrogate)');
    const holdBack = stops.length ? Math.max(...stops.map((s) => s.length)) - 1 : 0;
    const ids: number[] = [];
    const logprobs: TokenLogprob[] = [];
    const stream = this.model.tokenizer.stream(tokens);
    let out = '';
    let emitted = 0;
    let finishReason: GenerateResult['finish_reason'] = 'length';
    let job!: GenerateJob;
    let lastTokenAt = 0;
    const emit = (tokenId: number, final: boolean) => {
      if (!onText) return;
      let upTo = final ? out.length : Math.max(emitted, out.length - holdBack);
      // The hold-back counts UTF-16 units: never end a chunk between the two halves of a character.
      if (upTo > emitted && upTo < out.length && isHighSurrogate(out.charCodeAt(upTo - 1))) upTo--;
      onText(tokenId, out.slice(emitted, upTo), tokenId >= 0 ? logprobs.at(-1) : undefined);
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
      if (p.logprobs || p.chosen_logprob) logprobs.push({ token_id: c.token, logprob: c.logprob!, top: (c.top ?? []).map((x) => ({ token_id: x.token, logprob: x.logprob })), offset: out.length });
      out += stream.push(c.token);
      const hit = stops.map((s) => out.indexOf(s, Math.max(0, emitted - holdBack))).filter((i) => i >= 0);
      if (hit.length > 0) {
        out = out.slice(0, Math.min(...hit));
        // Tokens whose text the stop string cut start at the text's end (those streamed before it was seen went out as they were).
        for (const l of logprobs) l.offset = Math.min(l.offset, out.length);
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
    const result = new Promise<GenerateResult>((resolve, reject) => {
      job = {
        type: 'generate',
        id: this.engine.newJobId(),
        task,
        adapter,
        tokens,
        maxTokens,
        sampling: {
          temperature: effectiveTemperature(p.temperature ?? 1),
          topP: p.top_p ?? 1,
          topK: p.top_k ?? 0,
          seed: p.seed ?? randomInt(2 ** 47),
          logprobs: p.logprobs ?? 0,
          ...(p.chosen_logprob && { chosenLogprob: true }),
          ...(logitBias && { logitBias }),
          ...((p.presence_penalty || p.frequency_penalty) && { penalties: { presence: p.presence_penalty ?? 0, frequency: p.frequency_penalty ?? 0 } }),
        },
        onToken,
        ...(members && { members }),
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
          if (p.logprobs || p.chosen_logprob) body.logprobs = logprobs;
          resolve(body);
        },
      };
    });
    return { job, result };
  }

  /** Log-probabilities of each row's targets after its context, all rows in batched passes. */
  private async scoreRows(t: ResolvedTask, rows: { context: number[]; targets: number[] }[], ctl: RequestControl): Promise<number[][]> {
    let job!: ScoreJob;
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
    const [lp] = await this.run(ctl, [{ job, result }]);
    return lp;
  }

  async score(task: string, p: { prompt: string; completion: string; raw?: boolean; eos?: boolean; max_length?: number }, ctl: RequestControl = {}) {
    const t = await this.registry.resolve(task);
    const adapter = t.adapter?.tensors ?? null;
    const prompt = p.raw ? p.prompt : applyTemplate(t.spec.promptTemplate, p.prompt);
    const context = await this.model.tokenizer.encode(prompt, { addBos: true });
    const targets = await this.model.tokenizer.continuation(prompt, p.completion);
    if (p.eos) targets.push(this.model.tokenizer.eosTokenId);
    if (p.max_length !== undefined) targets.splice(Math.max(0, p.max_length - context.length));
    // With no context and no soft prompt, nothing predicts the first token: it is not counted.
    const predicted = context.length === 0 && adapter?.kind !== 'prompt' ? targets.length - 1 : targets.length;
    if (predicted <= 0) throw new ServerError('invalid_request', targets.length === 0 ? 'completion has no tokens to score' : 'nothing to score: with an empty prompt, nothing predicts the first token');
    this.checkContext(adapter, context.length + targets.length, 0);
    const [lp] = await this.scoreRows(t, [{ context, targets }], ctl);
    const sum = lp.reduce((a, b) => a + b, 0);
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
    const rows: { context: number[]; targets: number[] }[] = [];
    for (const input of inputs) {
      const text = applyTemplate(template, input);
      const context = await promptIds(this.model.tokenizer, text, adapter);
      // Each label's tokens as they follow this input (tokenizer.ts continuation).
      for (const targets of await Promise.all(labels.map((w) => this.model.tokenizer.continuation(text, ' ' + w)))) {
        this.checkContext(adapter, context.length + targets.length, 0);
        rows.push({ context, targets });
      }
    }
    const lp = await this.scoreRows(t, rows, ctl);
    const results = inputs.map((_, i) => {
      // Own properties whatever the label: assigning scores['__proto__'] would set the prototype instead.
      const scores: Record<string, number> = Object.fromEntries(labels.map((w, j) => [w, lp[i * labels.length + j].reduce((a, b) => a + b, 0)]));
      const label = labels.reduce((best, w) => (scores[w] > scores[best] ? w : best), labels[0]);
      return { label, scores };
    });
    return { task, adapter_version: t.version, results };
  }
}

/**
 * Temperatures below this sample greedily: logits divided by less would leave float32's range in
 * the graph's head (1e-40 gave Infinity, then NaN weights and end-of-text), and the limit of
 * sampling as the temperature falls is the greedy choice.
 */
export const MIN_TEMPERATURE = 1e-6;

function effectiveTemperature(t: number): number {
  return t < MIN_TEMPERATURE ? 0 : t;
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}
