/**
 * What the built-in check kinds share: the reason text for an aborted run, a one-line text for
 * network errors (including Node's AggregateError from dual-stack connects, whose message is
 * empty), the first line of a bounded output, and create-time path checks that throw ConfigError.
 */
import { readFileSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { ConfigError, errorText } from '../../core/errors.ts';
import { sanitize } from '../../core/util/sanitize.ts';
import type { CheckContext, CheckOutcome } from '../../core/check/types.ts';

/** Longest reason a kind returns (the wire allows 256 characters; the runner may cut further). */
export const MAX_REASON = 200;

/**
 * The outcome of a run aborted by `signal`. The runner aborts at the check's timeout; when its
 * abort reason already says "timed out ..." that text is kept, otherwise the elapsed time is named.
 */
export function abortedOutcome(signal: AbortSignal, startedAt: number): CheckOutcome {
  const r: unknown = signal.reason;
  const given = r instanceof Error || (typeof r === 'object' && r !== null && 'message' in r) ? String((r as { message: unknown }).message) : typeof r === 'string' ? r : '';
  const output = /^timed out\b/.test(given) ? given : `timed out after ${Math.round(performance.now() - startedAt)} ms`;
  return { status: 'critical', output: sanitize(output, MAX_REASON) };
}

/**
 * One line for a network or system error: `connect ECONNREFUSED 127.0.0.1:8080`. Unwraps
 * `cause` (fetch-style wrappers) and AggregateError (every address tried), sanitised and bounded.
 */
export function networkErrorText(e: unknown): string {
  let err: unknown = e;
  for (let i = 0; i < 4 && err instanceof Error && err.cause !== undefined && /fetch failed|^$/.test(err.message); i++) err = err.cause;
  let text: string;
  if (err instanceof AggregateError && err.errors.length > 0) {
    const parts = [...new Set(err.errors.map((x) => errorText(x)))];
    text = parts.join('; ');
  } else {
    text = errorText(err);
    const code = (err as { code?: unknown } | null)?.code;
    if (!text && typeof code === 'string') text = code;
  }
  return sanitize(text || 'unknown error', MAX_REASON);
}

/** The first line of `text` (CR LF or LF), sanitised and bounded; '' when there is none. */
export function firstLine(text: string): string {
  const nl = text.indexOf('\n');
  let line = nl < 0 ? text : text.slice(0, nl);
  if (line.endsWith('\r')) line = line.slice(0, -1);
  return sanitize(line.trim(), MAX_REASON);
}

/** @throws ConfigError when `path` is not an existing directory. */
export function requireDirectory(path: string, what: string): void {
  let isDir = false;
  try {
    isDir = statSync(path).isDirectory();
  } catch {
    /* missing or unreadable: reported below */
  }
  if (!isDir) throw new ConfigError([`${what}: directory ${JSON.stringify(path)} does not exist`]);
}

/** @throws ConfigError when the directory that would hold `path` does not exist. */
export function requireParentDirectory(path: string, what: string): void {
  requireDirectory(dirname(path), what);
}

/** JSON-schema properties of a check's TLS files and name (http, grpc: each adds its own switch). */
export const TLS_FILES_SCHEMA = {
  ca: { type: 'string', minLength: 1, description: 'PEM file of the CA(s) to trust, relative to the config file' },
  cert: { type: 'string', minLength: 1, description: 'PEM client certificate file (mutual TLS)' },
  key: { type: 'string', minLength: 1, description: 'PEM client key file (mutual TLS)' },
} as const;

/**
 * Reads a check's TLS files (paths relative to the config file) at create time.
 * @throws ConfigError naming the file that cannot be read, or a cert without its key
 */
export function readTlsFiles(ctx: CheckContext, type: string, tls: { ca?: string; cert?: string; key?: string }): { ca?: Buffer; cert?: Buffer; key?: Buffer } {
  if ((tls.cert === undefined) !== (tls.key === undefined)) throw new ConfigError([`${type}: tls.cert and tls.key go together`]);
  const out: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
  for (const what of ['ca', 'cert', 'key'] as const) {
    const file = tls[what];
    if (!file) continue;
    const path = ctx.resolvePath(file);
    try {
      out[what] = readFileSync(path);
    } catch (e) {
      throw new ConfigError([`${type}: tls.${what} ${JSON.stringify(path)} cannot be read: ${errorText(e)}`]);
    }
  }
  return out;
}
