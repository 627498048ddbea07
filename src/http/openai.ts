import type { Inference } from '../engine/inference.js';
import { ServerError } from '../errors.js';

/**
 * Refuses an OpenAI parameter that would change the output and that this server does not
 * implement: `unsupported` maps each to its neutral values (compared as JSON), which are accepted.
 */
export function refuseUnsupported(body: Record<string, unknown>, unsupported: Record<string, unknown[]>): void {
  for (const [name, neutral] of Object.entries(unsupported)) {
    const value = body[name];
    if (Object.hasOwn(body, name) && value !== undefined && !neutral.some((n) => JSON.stringify(n) === JSON.stringify(value))) {
      throw new ServerError('invalid_request', `${name} is not supported by this server; leave it out`);
    }
  }
}

/**
 * A token as OpenAI's logprobs name it: its text, or, where it is not whole characters (a partial
 * UTF-8 character reads U+FFFD), `bytes:` and its bytes, as `bytes:\xe2\x80`.
 */
export function tokenName(inference: Inference, id: number): string {
  const text = inference.tokenText(id);
  if (!text.includes('\ufffd')) return text;
  return `bytes:${inference.tokenBytes(id).map((b) => `\\x${b.toString(16).padStart(2, '0')}`).join('')}`;
}
