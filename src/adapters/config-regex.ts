import { setFlagsFromString } from 'node:v8';
import { FormatError } from '../errors.js';

// V8's non-backtracking engine, for RegExps with the `l` flag: their time is linear in the input.
setFlagsFromString('--enable-experimental-regexp-engine');

/** One pattern's characters and capturing groups: the linear engine's time grows with its length, and with the square of its groups. */
const MAX_PATTERN_CHARS = 128;
const MAX_CAPTURING_GROUPS = 4;
/** Every pattern of a config together, in characters: each is tried on every module name (≈3 µs a character at worst, ad hoc). */
export const MAX_CONFIG_PATTERN_CHARS = 512;

/** Capturing groups of a pattern, `(…)` and named `(?<n>…)`, outside escapes and character classes. */
function capturingGroups(pattern: string): number {
  let n = 0;
  let inClass = false;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '\\') i++;
    else if (inClass) inClass = c !== ']';
    else if (c === '[') inClass = true;
    else if (c === '(' && (pattern[i + 1] !== '?' || (pattern[i + 2] === '<' && pattern[i + 3] !== '=' && pattern[i + 3] !== '!'))) n++;
  }
  return n;
}

/**
 * The regular expressions of an adapter config, together: at most MAX_CONFIG_PATTERN_CHARS (so that
 * their time on a model's hundreds of module names stays well under a second at worst).
 */
export function checkPatternBudget(cfg: Record<string, unknown>, fields: string[]): void {
  let chars = 0;
  for (const f of fields) {
    const v = cfg[f];
    if (typeof v === 'string' && v !== 'all-linear') chars += v.length;
    else if (f === 'layers_pattern' && Array.isArray(v)) chars += v.reduce((n: number, p) => n + String(p).length, 0);
    else if (v && typeof v === 'object' && !Array.isArray(v)) chars += Object.keys(v).reduce((n, k) => n + k.length, 0);
  }
  if (chars > MAX_CONFIG_PATTERN_CHARS) throw new FormatError('invalid_config', `the config's regular expressions (${fields.join(', ')}) have ${chars} characters together; at most ${MAX_CONFIG_PATTERN_CHARS}`);
}

/**
 * A regular expression of an adapter config (target_modules, rank_pattern's keys, …; PEFT compiles
 * them with Python's `re`), placed in `wrap(pattern)`. It runs on the event loop, at upload and at
 * every re-parse of an evicted adapter: with backtracking, `(.|.)*Z` took 19 s on one module name.
 * So it runs on V8's linear-time engine, and a pattern that needs backtracking (a lookaround, a
 * backreference) is refused: no static check bounds those (`(?=t)(.|.){27}X` passed one and took
 * 12.7 s). The linear engine's own time grows with the pattern (a 6 KB key took 3.8 s over twelve
 * names, a 60 KB one exhausted V8's memory and aborted the process): patterns are short.
 */
export function configRegex(field: string, pattern: string, wrap: (p: string) => string = (p) => p): RegExp {
  const refuse = (why: string): never => {
    throw new FormatError('invalid_config', `${field}: ${JSON.stringify(pattern)} ${why}`);
  };
  if (pattern.length > MAX_PATTERN_CHARS) refuse(`has ${pattern.length} characters; at most ${MAX_PATTERN_CHARS}`);
  const groups = capturingGroups(pattern);
  if (groups > MAX_CAPTURING_GROUPS) refuse(`has ${groups} capturing groups; at most ${MAX_CAPTURING_GROUPS} (write (?:…) for the others)`);
  // Alone first, as Python compiles it: an unbalanced `a)|(b` would otherwise escape the wrapper.
  try {
    new RegExp(pattern);
  } catch (e) {
    refuse(`is not a valid regular expression: ${(e as Error).message}`);
  }
  try {
    return new RegExp(wrap(pattern), 'l');
  } catch {
    return refuse('cannot run in linear time (a lookaround, a backreference, or a large counted repetition): not accepted, as it could take exponential time; write it without');
  }
}
