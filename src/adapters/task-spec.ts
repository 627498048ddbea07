import { Type } from '@sinclair/typebox';
import { FormatError } from '../errors.js';
import { firstSchemaError } from './schema-check.js';

export interface TaskSpec {
  kind: 'generation' | 'classification';
  promptTemplate: string;
  labels: string[];
}

/**
 * The limits a classify request's own `labels` and `prompt_template` must meet (src/http/schemas.ts
 * uses the same numbers, and a test holds them equal): a task.json beyond them describes a task
 * that no request could ever use, so the upload is refused instead.
 */
export const MAX_TEMPLATE_CHARS = 10_000;
export const MAX_LABEL_CHARS = 256;
export const MIN_LABELS = 2;
export const MAX_LABELS = 64;

export const DEFAULT_SPEC: TaskSpec = { kind: 'generation', promptTemplate: '{text}', labels: [] };

/** The fields of task.json this server reads; others (PEFT tools write `task`) pass through. */
const TaskJson = Type.Object({
  kind: Type.Optional(Type.Union([Type.Literal('generation'), Type.Literal('classification')])),
  prompt_template: Type.Optional(Type.String({ maxLength: MAX_TEMPLATE_CHARS })),
  labels: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: MAX_LABEL_CHARS }), { minItems: MIN_LABELS, maxItems: MAX_LABELS })),
});

export function checkTemplate(template: string): void {
  if (template.split('{text}').length !== 2) {
    throw new FormatError('invalid_template', `prompt_template must contain {text} exactly once: ${JSON.stringify(template.slice(0, 200))}`);
  }
}

export function checkLabels(labels: unknown): string[] {
  if (!Array.isArray(labels) || !labels.every((l) => typeof l === 'string' && l.length > 0 && l.length <= MAX_LABEL_CHARS)) {
    throw new FormatError('invalid_labels', `labels must be an array of non-empty strings of at most ${MAX_LABEL_CHARS} characters`);
  }
  if (labels.length < MIN_LABELS || labels.length > MAX_LABELS) throw new FormatError('invalid_labels', `a classification task needs ${MIN_LABELS} to ${MAX_LABELS} labels, got ${labels.length}`);
  if (new Set(labels).size !== labels.length) throw new FormatError('invalid_labels', 'labels must be distinct');
  return labels;
}

/** Parses `task.json`; absent, the task is plain generation with the raw prompt. */
export function parseTaskSpec(raw: Buffer | undefined): TaskSpec {
  if (!raw) return DEFAULT_SPEC;
  let json: unknown;
  try {
    json = JSON.parse(raw.toString('utf8'));
  } catch (e) {
    throw new FormatError('invalid_json', `task.json is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new FormatError('invalid_json', 'task.json must be an object');
  const problem = firstSchemaError(TaskJson, json);
  if (problem) {
    const field = problem.path.split('/')[1];
    const code = field === 'labels' ? 'invalid_labels' : field === 'prompt_template' ? 'invalid_template' : 'invalid_task';
    throw new FormatError(code, `task.json ${problem.message}`);
  }
  const spec = json as { kind?: TaskSpec['kind']; prompt_template?: string; labels?: string[] };
  const kind = spec.kind ?? 'generation';
  const promptTemplate = spec.prompt_template ?? '{text}';
  checkTemplate(promptTemplate);
  const labels = kind === 'classification' || spec.labels !== undefined ? checkLabels(spec.labels) : [];
  return { kind, promptTemplate, labels };
}

/**
 * A task whose template (and longest label) already fill the context leaves no room for any input:
 * every request on it would be refused, so the adapter is refused at upload instead.
 */
export function checkServable(spec: TaskSpec, virtualTokens: number, contextTokens: number, encode: (text: string) => ArrayLike<number>): void {
  const fixed = encode(spec.promptTemplate.replace('{text}', '')).length;
  const label = spec.labels.reduce((n, l) => Math.max(n, encode(' ' + l).length), 0);
  const used = virtualTokens + fixed + label;
  // At least one input token and one generated (or scored) token must fit.
  if (used + 2 > contextTokens) {
    throw new FormatError('unservable_task', `the prompt template (${fixed} tokens), longest label (${label}) and ${virtualTokens} virtual tokens leave no room for an input in the ${contextTokens}-token context`);
  }
}

export function applyTemplate(template: string, text: string): string {
  const at = template.indexOf('{text}');
  return template.slice(0, at) + text + template.slice(at + '{text}'.length);
}
