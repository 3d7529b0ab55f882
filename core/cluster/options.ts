/**
 * The `cluster` option (config key or `--cluster` flag): a Redis URL, with the group's own
 * settings as query parameters (`redis://host:6379/0?replicas=2&ttl=3&group=web`), or an object
 * `{ url, replicas, ttl, group }`. What the URL carries besides those (password, database,
 * `rediss://` for TLS) goes to the Redis client (ioredis) as it is.
 */
import { LocalError } from '../errors.ts';

export interface ClusterOptions {
  /** The Redis URL without the group's parameters (may hold a password: never log it). */
  url: string;
  /** Members that check each backend (R). */
  replicas: number;
  /** Heartbeat TTL of a member (ms): a member silent this long is gone. */
  ttlMs: number;
  /** Key prefix, so several groups can share one Redis. */
  group: string;
}

export const CLUSTER_DEFAULTS = { replicas: 2, ttl: 3, group: 'qhcp' } as const;
const GROUP = /^[A-Za-z0-9_.-]{1,64}$/;

export type ClusterSetting = string | { url: string; replicas?: number; ttl?: number; group?: string };

/** @throws LocalError for a URL that is not redis:// or rediss://, or an option out of range */
export function clusterOptions(setting: ClusterSetting): ClusterOptions {
  const given = typeof setting === 'string' ? { url: setting } : setting;
  let u: URL;
  try {
    u = new URL(given.url);
  } catch {
    throw new LocalError('QHCP_ERR_CLI_USAGE', 'cluster: not a URL (expected redis://host:6379/0 or rediss://...)');
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new LocalError('QHCP_ERR_CLI_USAGE', `cluster: ${u.protocol} is not redis: or rediss:`);
  const take = (k: string): string | undefined => {
    const v = u.searchParams.get(k) ?? undefined;
    u.searchParams.delete(k);
    return v;
  };
  const num = (k: string, v: string | number | undefined, dflt: number, min: number, max: number, int: boolean): number => {
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max || (int && !Number.isInteger(n))) throw new LocalError('QHCP_ERR_CLI_USAGE', `cluster: ${k} must be ${int ? 'an integer ' : ''}${min}-${max}, got ${String(v)}`);
    return n;
  };
  const replicas = num('replicas', given.replicas ?? take('replicas'), CLUSTER_DEFAULTS.replicas, 1, 16, true);
  const ttl = num('ttl', given.ttl ?? take('ttl'), CLUSTER_DEFAULTS.ttl, 0.3, 600, false);
  const group = given.group ?? take('group') ?? CLUSTER_DEFAULTS.group;
  if (!GROUP.test(group)) throw new LocalError('QHCP_ERR_CLI_USAGE', 'cluster: group must be 1-64 letters, digits, _ . -');
  return { url: u.toString(), replicas, ttlMs: Math.round(ttl * 1000), group };
}

/** The URL with any password masked, for logs. */
export function safeUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'redis://?';
  }
}
