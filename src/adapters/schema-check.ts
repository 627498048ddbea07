import type { TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';

/**
 * The first way `value` breaks `schema`, as "at /path: message", or null when it conforms. TypeBox
 * checks own properties by type, so keys like `__proto__` or `toString` are plain data here.
 */
export function firstSchemaError(schema: TSchema, value: unknown): string | null {
  const e = Value.Errors(schema, value).First();
  if (!e) return null;
  const shown = JSON.stringify(e.value)?.slice(0, 80) ?? String(e.value);
  return `at ${e.path || '/'}: ${e.message} (got ${shown})`;
}
