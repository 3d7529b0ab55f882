/**
 * A minimal CoreLike for plugin unit tests: the real hooks (guarded like the real core's, so a
 * throwing tap behaves as in production) and a logger whose lines are kept in memory.
 */
import { createHooks, guardHooks, type BackendView, type CoreLike } from '../../core/plugin/hooks.ts';
import { createLogger, type Logger } from '../../core/util/log.ts';
import { validateOptions, type PluginConstructor, type QhcpPlugin } from '../../core/plugin/loader.ts';

export interface FakeCore extends CoreLike {
  /** Log lines written so far (JSON, one object per line). */
  readonly lines: string[];
  /** Parsed log lines whose `msg` matches `re`. */
  logged(re: RegExp): Array<Record<string, unknown>>;
  configFile?: string;
}

export function fakeCore(role: 'server' | 'loadbalancer', opts: { node?: string; pluginTimeoutMs?: number; configFile?: string } = {}): FakeCore {
  const lines: string[] = [];
  const logger: Logger = createLogger({ level: 'debug', json: true, write: (l) => lines.push(l), burst: 1000 });
  const hooks = createHooks();
  guardHooks(hooks, logger, opts.pluginTimeoutMs ?? 2000, new Map());
  return {
    role,
    hooks,
    logger,
    node: opts.node ?? `test-${role}`,
    lines,
    ...(opts.configFile ? { configFile: opts.configFile } : {}),
    logged(re) {
      return lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((o) => re.test(String(o.msg)));
    },
  };
}

/** Builds a plugin the way the loader does: options validated (defaults filled) by its schema. */
export function build<T extends QhcpPlugin>(ctor: { new (options: never, ...rest: never[]): T; schema?: object }, options: Record<string, unknown> = {}): T {
  return new ctor(validateOptions(ctor as unknown as PluginConstructor, options, 'test') as never);
}

/** A backend as balancers see it. */
export function backend(address: string, over: Partial<{ state: BackendView['state']; loadScore: number; reportedAt: number | null; weight: number; ageMs: number | null; metrics: Record<string, number> }> = {}): BackendView {
  const metrics = { ...(over.metrics ?? {}), ...(over.loadScore !== undefined ? { loadScore: over.loadScore } : {}) };
  return {
    address,
    state: over.state ?? 'UP',
    metrics,
    reportedAt: over.reportedAt === undefined ? Date.now() : over.reportedAt,
    weight: over.weight ?? 1,
    latencyMs: null,
    verdict: 'SERVING',
    agentAdmin: 'READY',
    adminState: 'READY',
    reason: null,
    ...(over.ageMs !== undefined ? { ageMs: over.ageMs } : {}),
  };
}
