/**
 * `qhcp/testing`: what a plugin author needs to test a plugin without the qhcp repository.
 * A fake core with the real hooks (guarded exactly as the running core guards them, so a tap
 * that throws or hangs behaves as in production), a logger that keeps its lines, and helpers
 * that build a plugin the way the loader does and make backends as balancers see them.
 */
import { dirname, resolve } from 'node:path';
import { createHooks, guardHooks, MetricsReport, type AlertEvent, type BackendView, type CoreLike, type MetricDefinition, type Transition } from '../plugin/hooks.ts';
import { createLogger, type Logger } from '../util/log.ts';
import { applyPlugins, validateOptions, type QhcpPlugin } from '../plugin/loader.ts';
import { isPluginDefinition, type PluginBody, type PluginDefinition, type PluginOf } from '../plugin/define.ts';
import { buildConfig, type QhcpConfig, type QhcpUserConfig } from '../config/config.ts';
import type { FromSchema, ObjectSchema } from '../config/schema-types.ts';
import type { Metrics } from '../protocol/messages.ts';

export { guardHooks, createHooks };

export interface FakeCore extends CoreLike {
  /** Log lines written so far (JSON, one object per line). */
  readonly lines: string[];
  /** Parsed log lines whose `msg` matches `re`. */
  logged(re: RegExp): Array<Record<string, unknown>>;
  configFile?: string;
}

export interface FakeCoreOptions {
  node?: string;
  /** How long an async tap may take before the guard cuts it off (default 2000 ms). */
  pluginTimeoutMs?: number;
  /** Where the config file would be: `configDir` and `resolvePath` follow it (default: the working directory). */
  configFile?: string;
  /** Config values over the defaults (validated as the real core validates them). */
  config?: QhcpUserConfig;
}

/** A core for one role with real, guarded hooks and an in-memory logger. */
export function fakeCore(role: 'server' | 'loadbalancer', opts: FakeCoreOptions = {}): FakeCore {
  const lines: string[] = [];
  const logger: Logger = createLogger({ level: 'debug', json: true, write: (l) => lines.push(l), burst: 1000 });
  const hooks = createHooks();
  guardHooks(hooks, logger, opts.pluginTimeoutMs ?? 2000, new Map());
  const config: Readonly<QhcpConfig> = buildConfig(opts.config ?? {}, opts.configFile, {}).config;
  const configDir = opts.configFile ? dirname(opts.configFile) : process.cwd();
  return {
    role,
    hooks,
    logger,
    node: opts.node ?? `test-${role}`,
    config,
    configDir,
    resolvePath: (p: string) => resolve(configDir, p),
    lines,
    ...(opts.configFile ? { configFile: opts.configFile } : {}),
    logged(re) {
      return lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((o) => re.test(String(o.msg)));
    },
  };
}

/**
 * Builds a plugin the way the loader does: options validated (defaults filled) by its schema.
 * Takes a definePlugin() definition, or a plugin class with a static schema.
 * @throws ConfigError for options the schema refuses (the message the user would see)
 */
export function build<S extends ObjectSchema, B extends PluginBody>(definition: PluginDefinition<S, B>, options?: FromSchema<S, 'in'>): PluginOf<B>;
export function build<T extends QhcpPlugin>(ctor: { new (options: never, ...rest: never[]): T; schema?: object }, options?: Record<string, unknown>): T;
export function build(factory: object, options: unknown = {}): QhcpPlugin {
  const opts = options as Record<string, unknown>;
  if (isPluginDefinition(factory)) return factory.create(validateOptions(factory, opts, 'plugin', factory.pluginName) as never);
  const ctor = factory as { new (options: never): QhcpPlugin; schema?: object };
  return new ctor(validateOptions(ctor, opts, 'plugin') as never);
}

/** Builds (see build) and applies a plugin to `core`, bounded by the plugin timeout as the core does. */
export async function applyPlugin<S extends ObjectSchema, B extends PluginBody>(core: FakeCore, definition: PluginDefinition<S, B>, options?: FromSchema<S, 'in'>): Promise<PluginOf<B>>;
export async function applyPlugin<T extends QhcpPlugin>(core: FakeCore, ctor: { new (options: never, ...rest: never[]): T; schema?: object }, options?: Record<string, unknown>): Promise<T>;
export async function applyPlugin(core: FakeCore, factory: object, options: unknown = {}): Promise<QhcpPlugin> {
  const plugin = build(factory as PluginDefinition<ObjectSchema>, options as Record<string, unknown>);
  await applyPlugins([plugin], core, core.config.pluginTimeout * 1000);
  return plugin;
}

/** Metrics plugins: the declared metrics and one background sample, as the agent takes it. */
export async function collect(core: FakeCore): Promise<{ definitions: MetricDefinition[]; metrics: Metrics; report: MetricsReport }> {
  const definitions = core.hooks.metricDefinitions.call([]);
  const report = new MetricsReport();
  await core.hooks.collect.promise(report);
  return { definitions, metrics: { ...report.values }, report };
}

/** Balancer plugins: what `pick` answers for these servers (undefined: no balancer answered). */
export function pick(core: FakeCore, servers: readonly BackendView[], key?: string): BackendView | undefined {
  return core.hooks.pick.call({ servers, key, now: Date.now() });
}

/** Alert plugins: a state change as the load balancer reports it (fields default to UP -> DOWN). */
export function transition(server: string, over: Partial<Transition> = {}): Transition {
  return { server, from: 'UP', to: 'DOWN', reason: 'test', at: Date.now(), failures: 3, successes: 0, lastError: null, metrics: {}, ...over } as Transition;
}

/** Alert plugins: fires the `alert` hook with a transition (or any event) and waits for every tap. */
export async function alert(core: FakeCore, event: Transition | AlertEvent): Promise<void> {
  const e: AlertEvent = 'kind' in event ? event : { kind: 'transition', node: core.node, transition: event };
  await core.hooks.alert.promise(e);
}

/** A backend as balancers and alerts see it (UP, SERVING, reported now, unless `over` says otherwise). */
export function backend(
  address: string,
  over: Partial<{ state: BackendView['state']; loadScore: number; reportedAt: number | null; weight: number; ageMs: number | null; metrics: Record<string, number> }> = {},
): BackendView {
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
