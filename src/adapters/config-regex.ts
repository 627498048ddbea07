import { setFlagsFromString } from 'node:v8';
import { FormatError } from '../errors.js';

// V8's non-backtracking engine, for RegExps with the `l` flag: their time is linear in the input.
setFlagsFromString('--enable-experimental-regexp-engine');

/**
 * A regular expression of an adapter config (target_modules, rank_pattern's keys, …; PEFT compiles
 * them with Python's `re`), placed in `wrap(pattern)`. It runs on the event loop, at upload and at
 * every re-parse of an evicted adapter: with backtracking, `(.|.)*Z` took 19 s on one module name.
 * So it runs on V8's linear-time engine, and a pattern that needs backtracking (a lookaround, a
 * backreference) is refused: no static check bounds those (`(?=t)(.|.){27}X` passed one and took
 * 12.7 s).
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
  try {
    return new RegExp(wrap(pattern), 'l');
  } catch {
    return refuse('needs backtracking (a lookaround or a backreference), which can take exponential time: not accepted; write it without');
  }
}
