/**
 * Plugins: the contract, the built-in registry, and the loader that turns the config's
 * `plugins` list into applied plugin instances (options validated against each plugin's own
 * JSON schema, roles and dependencies checked, `apply` bounded by the plugin timeout).
 */
import { pathToFileURL } from 'node:url';
import { resolve, dirname } from 'node:path';
import { Ajv } from 'ajv';
import { ConfigError, PluginError, errorText } from '../errors.ts';
import { describeAjvErrors, type PluginEntry, type QhcpConfig } from '../config/config.ts';
import { importUserModule } from '../config/user-modules.ts';
import type { CoreLike } from './hooks.ts';
import { isPluginDefinition, isPluginUse, type PluginDefinition } from './define.ts';
import type { ObjectSchema } from '../config/schema-types.ts';
import { withTimeout } from '../util/timeout.ts';

export type Family = 'metrics' | 'auth' | 'balancer' | 'alert' | 'check' | 'sync' | 'proxy' | 'other';
export type RoleName = 'server' | 'loadbalancer';

/** A plugin instance: a name and an `apply` that taps hooks. */
export interface QhcpPlugin {
  name: string;
  family?: Family;
  /** Roles it applies to (default: both). */
  roles?: RoleName[];
  /** Names of plugins that must be present too. */
  dependencies?: string[];
  apply(core: CoreLike): void | Promise<void>;
}

/** A plugin module's default export: a class (or factory) with an options schema. */
export interface PluginConstructor {
  new (options: Record<string, unknown>): QhcpPlugin;
  /** JSON schema of the options; defaults are filled in from it. */
  schema?: object;
}

/** Sources run through tsx use .ts; the compiled dist/ uses .js. */
const EXT = import.meta.url.endsWith('.ts') ? '.ts' : '.js';

/** Built-in plugins, by the name used in qhcp.config.ts (module path without extension). Loaded on demand. */
export const BUILTIN_PLUGINS: Record<string, string> = {
  'system-metrics': '../../plugins/metrics/system',
  jwt: '../../plugins/auth/jwt',
  mtls: '../../plugins/auth/mtls',
  'round-robin': '../../plugins/balancer/round-robin',
  'weighted-round-robin': '../../plugins/balancer/weighted-round-robin',
  'least-loaded': '../../plugins/balancer/least-loaded',
  'power-of-two': '../../plugins/balancer/power-of-two',
  log: '../../plugins/alert/log',
  webhook: '../../plugins/alert/webhook',
  exec: '../../plugins/alert/exec',
  haproxy: '../../plugins/sync/haproxy',
  'haproxy-agent': '../../plugins/sync/haproxy-agent',
  nginx: '../../plugins/sync/nginx',
  'envoy-eds': '../../plugins/sync/envoy-eds',
  caddy: '../../plugins/sync/caddy',
  'tcp-proxy': '../../plugins/proxy/tcp',
  'least-connections': '../../plugins/balancer/least-connections',
};

/** What a role gets for a family that the config's list leaves out (unless `defaults: false`). */
export const DEFAULT_PLUGINS: Record<RoleName, Partial<Record<Family, string>>> = {
  server: { metrics: 'system-metrics' },
  loadbalancer: { balancer: 'round-robin', alert: 'log' },
};

/**
 * Families whose default stays when other plugins of the family are listed: alerts add up (a
 * webhook does not silence the log). `defaults: false` turns every default off.
 */
export const ADDITIVE_FAMILIES: ReadonlySet<Family> = new Set(['alert']);

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, verbose: true });

/** What a plugin module exports by default: a definePlugin() definition, or a class with a static schema. */
type PluginFactory = PluginConstructor | PluginDefinition<ObjectSchema>;

async function importPlugin(spec: string, baseDir: string, where: string): Promise<PluginFactory> {
  const builtin = BUILTIN_PLUGINS[spec];
  const url = builtin ? new URL(builtin + EXT, import.meta.url).href : pathToFileURL(resolve(baseDir, spec)).href;
  let mod: { default?: unknown };
  try {
    mod = builtin ? ((await import(url)) as { default?: unknown }) : await importUserModule(url);
  } catch (e) {
    const known = Object.keys(BUILTIN_PLUGINS).join(', ');
    const hint = builtin || spec.startsWith('.') || spec.startsWith('/') ? errorText(e) : `unknown plugin (built-ins: ${known}; modules start with ./ or /)`;
    throw new ConfigError([`${where}: cannot load plugin "${spec}": ${hint}`]);
  }
  const ctor = mod.default;
  if (typeof ctor !== 'function') throw new ConfigError([`${where}: module "${spec}" has no default export (export default definePlugin({ ... }))`]);
  return ctor as PluginFactory;
}

/** Validates the options against the factory's schema (defaults filled in) and builds the plugin. @throws ConfigError */
function instantiate(factory: PluginFactory, options: Record<string, unknown>, where: string, spec: string): QhcpPlugin {
  const opts = validateOptions(factory, options, where, spec);
  return isPluginDefinition(factory) ? factory.create(opts) : new factory(opts);
}

function isPlugin(x: unknown): x is QhcpPlugin {
  return !!x && typeof x === 'object' && typeof (x as QhcpPlugin).apply === 'function' && typeof (x as QhcpPlugin).name === 'string';
}

/**
 * Validates options against a plugin's schema, filling defaults. A plugin without a schema is
 * refused: its options would go unchecked.
 * @throws ConfigError
 */
export function validateOptions(ctor: { schema?: object; name?: string }, options: Record<string, unknown>, where: string, spec = ctor.name ?? 'plugin'): Record<string, unknown> {
  if (!ctor.schema || typeof ctor.schema !== 'object') {
    throw new ConfigError([`${where}: plugin "${spec}" has no options schema; define it with definePlugin({ name, schema, apply }) from 'qhcp' (or give its class a static \`schema\`)`]);
  }
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new ConfigError([`${where}.options: must be object${typeof options !== 'object' ? ` (got ${JSON.stringify(options)})` : ''}`]);
  }
  // The config is deep-frozen; ajv fills defaults into a copy (functions and instances are kept).
  const opts = copyPlain(options);
  const validate = ajv.compile(ctor.schema);
  if (!validate(opts)) throw new ConfigError(describeAjvErrors(validate.errors, opts, `${where}.options`));
  return opts;
}

/**
 * A plugin's options with its schema's defaults filled in: what a constructor uses so that each
 * default is written once, in the schema (the loader has validated already; this also serves a
 * plugin built directly, in tests or embedding). @throws ConfigError for options the schema refuses
 */
export function withDefaults<T>(schema: object, options: object | undefined, name: string): T {
  return validateOptions({ schema }, (options ?? {}) as Record<string, unknown>, name, name) as T;
}

function copyPlain<T>(v: T): T {
  if (Array.isArray(v)) return v.map(copyPlain) as T;
  if (v && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, copyPlain(x)])) as T;
  }
  return v;
}

/**
 * Turns the config's plugin list into instances for `role`, adding the role's defaults for
 * families the list leaves out. Collects every error before throwing.
 * @throws ConfigError
 */
export async function resolvePlugins(config: Pick<QhcpConfig, 'plugins' | 'defaults'>, role: RoleName, configFile?: string): Promise<QhcpPlugin[]> {
  const baseDir = configFile ? dirname(configFile) : process.cwd();
  const problems: string[] = [];
  const out: QhcpPlugin[] = [];
  const entries: PluginEntry[] = [...config.plugins];
  for (let i = 0; i < entries.length; i++) {
    const entry = entries[i]!;
    const where = `plugins[${i}]`;
    try {
      let plugin: QhcpPlugin;
      if (isPluginUse(entry)) {
        plugin = instantiate(entry.definition, entry.options, where, entry.definition.pluginName);
      } else if (isPluginDefinition(entry)) {
        plugin = instantiate(entry, {}, where, entry.pluginName);
      } else if (isPlugin(entry)) {
        plugin = entry;
      } else {
        let spec: string | undefined;
        let options: Record<string, unknown> = {};
        if (typeof entry === 'string') spec = entry;
        else if (Array.isArray(entry)) [spec, options = {}] = entry as [string, Record<string, unknown>?];
        else {
          const e = entry as { name?: string; module?: string; options?: Record<string, unknown> };
          spec = e.module ?? e.name;
          options = e.options ?? {};
        }
        if (!spec) throw new ConfigError([`${where}: needs a name (built-in), a module path, or an object with name and apply()`]);
        const factory = await importPlugin(spec, baseDir, where);
        plugin = instantiate(factory, options, where, spec);
        if (!isPlugin(plugin)) throw new ConfigError([`${where}: "${spec}" does not construct a plugin (name + apply)`]);
      }
      if (!plugin.roles || plugin.roles.includes(role)) out.push(plugin);
    } catch (e) {
      if (e instanceof ConfigError) problems.push(...e.problems);
      else problems.push(`${where}: ${errorText(e)}`);
    }
  }
  if (problems.length) throw new ConfigError(problems);
  if (config.defaults) {
    for (const [family, name] of Object.entries(DEFAULT_PLUGINS[role])) {
      // A listed plugin of the family replaces its default, except for additive families (the
      // transition log stays beside a webhook) where only the default itself being listed does.
      if (ADDITIVE_FAMILIES.has(family as Family) ? out.some((p) => p.name === name) : out.some((p) => p.family === family)) continue;
      const factory = await importPlugin(name!, baseDir, `default ${family} plugin`);
      out.push(instantiate(factory, {}, name!, name!));
    }
  }
  const names = new Set(out.map((p) => p.name));
  for (const p of out) {
    for (const dep of p.dependencies ?? []) {
      if (!names.has(dep)) problems.push(`plugin ${p.name}: needs plugin "${dep}", which is not in the list`);
    }
  }
  if (problems.length) throw new ConfigError(problems);
  return out;
}

/** Applies plugins in order, each bounded by `timeoutMs`. @throws PluginError */
export async function applyPlugins(plugins: QhcpPlugin[], core: CoreLike, timeoutMs: number): Promise<void> {
  for (const p of plugins) {
    try {
      await withTimeout(() => p.apply(core), timeoutMs, () => new PluginError('QHCP_ERR_PLUGIN_TIMEOUT', 'apply', p.name));
    } catch (e) {
      // A plugin that finds its configuration unusable only now (a key file for this role) says
      // so with a ConfigError: it stays one, so the CLI prints every problem and exits 2.
      if (e instanceof ConfigError) throw e;
      throw e instanceof PluginError ? e : new PluginError('QHCP_ERR_PLUGIN_HOOK', 'apply', p.name, e);
    }
  }
}

