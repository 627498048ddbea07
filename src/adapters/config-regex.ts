import { setFlagsFromString } from 'node:v8';
import { FormatError } from '../errors.js';

// V8's non-backtracking engine, for RegExps with the `l` flag: their time is linear in the input.
setFlagsFromString('--enable-experimental-regexp-engine');

/** Unbounded quantifiers (`*`, `+`, `{n,}`) that a pattern the linear engine cannot run may hold. */
const MAX_BACKTRACKING_QUANTIFIERS = 3;

/**
 * A regular expression of an adapter config (target_modules, rank_pattern's keys, …; PEFT compiles
 * them with Python's `re`), placed in `wrap(pattern)`. It runs on the event loop, at upload and at
 * every re-parse of an evicted adapter: with backtracking, `(.|.)*Z` took 19 s on one module name.
 * So it runs on V8's linear-time engine; a pattern that needs backtracking (a lookaround, a
 * backreference) is taken only without a repeated group and with at most three unbounded
 * quantifiers, which bounds its time on names of a few dozen characters.
 */
export function configRegex(field: string, pattern: string, wrap: (p: string) => string = (p) => p): RegExp {
  const refuse = (why: string): never => {
    throw new FormatError('invalid_config', `${field}: ${JSON.stringify(pattern)} ${why}`);
  };
  // Alone first, as Python compiles it: an unbalanced `a)|(b` would otherwise escape the wrapper.
  try {
    new RegExp(pattern);
  } catch (e) {
    refuse(`is not a valid regular expression: ${(e as Error).message}`);
  }
  const source = wrap(pattern);
  try {
    return new RegExp(source, 'l');
  } catch {
    // needs backtracking: checked below
  }
  if (/\)(?:[*+]|\{\d+,\d*\})/.test(pattern)) refuse('needs backtracking (a lookaround or backreference) and repeats a group, which can take exponential time: not accepted');
  const quantifiers = pattern.match(/(?<!\\)(?:[*+]|\{\d+,\})/g)?.length ?? 0;
  if (quantifiers > MAX_BACKTRACKING_QUANTIFIERS) refuse(`needs backtracking (a lookaround or backreference) and has ${quantifiers} unbounded quantifiers (at most ${MAX_BACKTRACKING_QUANTIFIERS}): not accepted`);
  return new RegExp(source);
}
