import type { TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';

/**
 * The first way `value` breaks `schema` (`path` like "/labels/3", `message` "at /labels/3: …"), or
 * null when it conforms. TypeBox checks own properties by type, so keys like `__proto__` or
 * `toString` are plain data here.
 */
export function firstSchemaError(schema: TSchema, value: unknown): { path: string; message: string } | null {
  const e = Value.Errors(schema, value).First();
  if (!e) return null;
  const shown = JSON.stringify(e.value)?.slice(0, 80) ?? String(e.value);
  return { path: e.path, message: `at ${e.path || '/'}: ${e.message} (got ${shown})` };
}
