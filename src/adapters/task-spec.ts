import { FormatError } from '../errors.js';

export interface TaskSpec {
  kind: 'generation' | 'classification';
  promptTemplate: string;
  labels: string[];
}

export const DEFAULT_SPEC: TaskSpec = { kind: 'generation', promptTemplate: '{text}', labels: [] };

export function checkTemplate(template: string): void {
  if (template.split('{text}').length !== 2) {
    throw new FormatError('invalid_template', `prompt_template must contain {text} exactly once: ${JSON.stringify(template)}`);
  }
}

export function checkLabels(labels: unknown): string[] {
  if (!Array.isArray(labels) || !labels.every((l) => typeof l === 'string' && l.length > 0)) {
    throw new FormatError('invalid_labels', 'labels must be an array of non-empty strings');
  }
  if (labels.length < 2 || labels.length > 64) throw new FormatError('invalid_labels', `a classification task needs 2 to 64 labels, got ${labels.length}`);
  if (new Set(labels).size !== labels.length) throw new FormatError('invalid_labels', 'labels must be distinct');
  return labels;
}

/** Parses `task.json`; absent, the task is plain generation with the raw prompt. */
export function parseTaskSpec(raw: Buffer | undefined): TaskSpec {
  if (!raw) return DEFAULT_SPEC;
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(raw.toString('utf8'));
  } catch (e) {
    throw new FormatError('invalid_json', `task.json is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof json !== 'object' || json === null) throw new FormatError('invalid_json', 'task.json must be an object');
  const kind = json.kind ?? 'generation';
  if (kind !== 'generation' && kind !== 'classification') throw new FormatError('invalid_task', `task.json kind must be generation or classification, got ${JSON.stringify(kind)}`);
  const promptTemplate = json.prompt_template ?? '{text}';
  if (typeof promptTemplate !== 'string') throw new FormatError('invalid_template', 'prompt_template must be a string');
  checkTemplate(promptTemplate);
  const labels = kind === 'classification' ? checkLabels(json.labels) : json.labels === undefined ? [] : checkLabels(json.labels);
  return { kind, promptTemplate, labels };
}

export function applyTemplate(template: string, text: string): string {
  const at = template.indexOf('{text}');
  return template.slice(0, at) + text + template.slice(at + '{text}'.length);
}
