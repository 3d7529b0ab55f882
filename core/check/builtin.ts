/**
 * The built-in check kinds, by the `type` used in the config (module path without extension),
 * loaded on demand: an agent imports only the kinds its config names (the grpc kind's
 * @grpc/grpc-js is imported later still, on its first run).
 */
import type { CheckKind } from './types.ts';

/** Sources run through tsx use .ts; the compiled dist/ uses .js. */
const EXT = import.meta.url.endsWith('.ts') ? '.ts' : '.js';

export const BUILTIN_CHECK_KINDS: Record<string, string> = {
  http: '../../plugins/check/http',
  tcp: '../../plugins/check/tcp',
  exec: '../../plugins/check/exec',
  grpc: '../../plugins/check/grpc',
  file: '../../plugins/check/file',
};

/** The built-in kind named `type`, or undefined when there is none. */
export async function loadBuiltinCheckKind(type: string): Promise<CheckKind | undefined> {
  const path = Object.hasOwn(BUILTIN_CHECK_KINDS, type) ? BUILTIN_CHECK_KINDS[type] : undefined;
  if (!path) return undefined;
  const mod = (await import(new URL(path + EXT, import.meta.url).href)) as { default: CheckKind };
  return mod.default;
}
