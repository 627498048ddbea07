import { Environment, Template } from '@huggingface/jinja';

/**
 * @huggingface/jinja (0.5.11) with two fixes, checked below at import so that a version
 * whose internals differ fails at start rather than rendering wrong prompts:
 * - Python's `str.strip`, `lstrip` and `rstrip`: the library's ignore their argument and trim
 *   JavaScript's whitespace, so Qwen3's template, which cuts `'\n'` around `</think>` with
 *   `.lstrip('\n')`, lost the spaces after it and rendered other text than transformers does.
 *   Patched on the library's string value class (not exported: reached through a value the
 *   Environment makes).
 * - A bounded `range()`: the library builds the whole list first, and `range(10**12)` grew an
 *   array until V8 aborted the process (a fatal error, which no worker thread contains).
 */
export { Template };

/** What Python's `str.strip()` removes with no argument: the characters for which `str.isspace()` is true. */
const PY_WHITESPACE = new Set(' \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000');

/** Python's strip family: `chars` (a string) or, when absent or None, whitespace; by code point, without copying the string into an array. */
export function pyStrip(s: string, chars: string | null, left: boolean, right: boolean): string {
  const strip = chars === null ? PY_WHITESPACE : new Set(chars);
  let start = 0;
  let end = s.length;
  if (left) {
    while (start < end) {
      const ch = String.fromCodePoint(s.codePointAt(start)!);
      if (!strip.has(ch)) break;
      start += ch.length;
    }
  }
  if (right) {
    while (end > start) {
      const low = s.charCodeAt(end - 1);
      const high = end - 2 >= start ? s.charCodeAt(end - 2) : 0;
      const pair = low >= 0xdc00 && low <= 0xdfff && high >= 0xd800 && high <= 0xdbff;
      const from = pair ? end - 2 : end - 1; // a surrogate pair is one code point
      if (!strip.has(s.slice(from, end))) break;
      end = from;
    }
  }
  return s.slice(start, end);
}

interface RuntimeValue {
  type: string;
  value: unknown;
}
type Builtins = Map<string, unknown>;

function patchStringMethods(): void {
  const env = new Environment();
  env.set('s', '');
  const sample = env.lookupVariable('s') as unknown as { constructor: new (v: string) => RuntimeValue; builtins: Builtins };
  const proto = Object.getPrototypeOf(sample) as object;
  const original = Object.getOwnPropertyDescriptor(proto, 'builtins')?.get;
  const FunctionValue = (sample.builtins.get('strip') as { constructor: new (fn: (args: RuntimeValue[]) => RuntimeValue) => unknown }).constructor;
  const StringValue = sample.constructor;
  if (!original) throw new Error('@huggingface/jinja: string values have no builtins getter to patch');
  Object.defineProperty(proto, 'builtins', {
    configurable: true,
    get(this: { value: string; _builtins?: Builtins }) {
      const fresh = this._builtins === undefined;
      const map = original.call(this) as Builtins;
      if (fresh) {
        const method = (left: boolean, right: boolean) =>
          new FunctionValue((args) => {
            const chars = args[0];
            if (chars !== undefined && chars.type !== 'NullValue' && chars.type !== 'UndefinedValue' && chars.type !== 'StringValue') throw new Error('strip arg must be None or str');
            return new StringValue(pyStrip(this.value, chars?.type === 'StringValue' ? (chars.value as string) : null, left, right));
          });
        map.set('strip', method(true, true));
        map.set('lstrip', method(true, false));
        map.set('rstrip', method(false, true));
      }
      return map;
    },
  });
}

/** The most items `range()` gives: templates loop over messages and tools, not millions. */
const MAX_RANGE = 1_000_000;

/** Every Environment's `range` global (set by the library's setupGlobals through `set`) counts its items first. */
function boundRange(): void {
  const set = Environment.prototype.set;
  Environment.prototype.set = function (this: Environment, name: string, value: unknown) {
    if (name !== 'range' || typeof value !== 'function') return set.call(this, name, value);
    const range = value as (...args: number[]) => number[];
    return set.call(this, name, (...args: number[]) => {
      const [start, stop, step = 1] = args.length === 1 ? [0, args[0]] : args;
      const n = step === 0 ? 0 : Math.ceil((stop - start) / step);
      if (n > MAX_RANGE) throw new Error(`range() of ${n} items: at most ${MAX_RANGE}`);
      return range(...args);
    });
  };
}

patchStringMethods();
boundRange();
const check = new Template("{{ '\\n\\n  y'.lstrip('\\n') }}|{{ 'xx\\ty\\u0085 '.strip() }}|{{ 'y..'.rstrip('.') }}").render({});
if (check !== '  y|xx\ty|y') throw new Error(`@huggingface/jinja: the patched str.strip family rendered ${JSON.stringify(check)}`);
let bounded = false;
try {
  new Template('{{ range(2000000) | length }}').render({});
} catch {
  bounded = true;
}
if (!bounded || new Template('{{ range(1, 7, 2) | length }}').render({}) !== '3') throw new Error('@huggingface/jinja: range() is not bounded as patched');
