/**
 * Configuration: defaults (in the schema) < config file (found by cosmiconfig) < flags.
 * Validated by ajv against the core schema; each plugin's options against the plugin's own
 * schema (plugins.ts). Every problem is reported by path, then the result is deep-frozen.
 */
import { pathToFileURL } from 'node:url';
import { statSync } from 'node:fs';
import { resolve, dirname } from 'node:path';
import { cosmiconfig, type Loader } from 'cosmiconfig';
import { Ajv, type ErrorObject } from 'ajv';
import { ConfigError, LocalError, errorText } from '../errors.ts';
import type { QhcpPlugin } from '../plugin/loader.ts';
import type { FromSchema } from './schema-types.ts';

/** Default UDP ports (docs/protocol.md, "Transport"). */
export const DEFAULT_SERVER_PORT = 4243;
export const DEFAULT_LOADBALANCER_PORT = 4242;

/** A plugin in the config's list: a built-in name, [name or module, options], {name|module, options}, or an inline plugin object. */
export type PluginEntry =
  | string
  | [string, Record<string, unknown>?]
  | { name?: string; module?: string; options?: Record<string, unknown> }
  | QhcpPlugin;

/**
 * What an option tells the CLI and the docs beyond its JSON schema (`x-qhcp` in the schema):
 * - `kind`: how the docs show its type and how a flag parses it (`ip` flags must be IP addresses,
 *   `port` 0-65535, `list` comma-separated);
 * - `flag`: the roles that take it as a command-line flag, named `--kebab-case` of the key
 *   unless `name` says otherwise (absent: file only);
 * - `defaultText`: how the docs show a default that is derived rather than fixed.
 */
export interface OptionMeta {
  kind?: 'seconds' | 'port' | 'ip' | 'path' | 'bytes' | 'fraction' | 'list' | 'name';
  flag?: { roles: readonly ('server' | 'loadbalancer')[]; name?: string; arg?: string; help?: string };
  defaultText?: string;
}

const opt = <const S extends object>(schema: S, description: string, meta: OptionMeta = {}) => ({ ...schema, description, 'x-qhcp': meta }) as S & { readonly description: string; readonly 'x-qhcp': OptionMeta };
const seconds = <const D extends number>(min: number, max: number, dflt: D) => ({ type: 'number', minimum: min, maximum: max, default: dflt }) as const;
const port = <const D extends number>(dflt: D) => ({ type: 'integer', minimum: 0, maximum: 65535, default: dflt }) as const;
const LB = { roles: ['loadbalancer'] } as const;
const SERVER = { roles: ['server'] } as const;
const BOTH = { roles: ['server', 'loadbalancer'] } as const;

/** A check entry: the runner's options are checked here; the kind's own options against its schema when the agent starts. */
const CHECK_ITEM = {
  type: 'object',
  required: ['type'],
  properties: {
    type: { type: 'string', pattern: '^[a-z][a-z0-9_-]{0,31}$' },
    name: { type: 'string', pattern: '^[A-Za-z0-9_.:#-]{1,64}$' },
    interval: { type: 'number', minimum: 0.05, maximum: 86400 },
    timeout: { type: 'number', minimum: 0.005, maximum: 3600 },
    rise: { type: 'integer', minimum: 1, maximum: 100 },
    fall: { type: 'integer', minimum: 1, maximum: 100 },
  },
} as const;
const CHECK_LIST = { type: 'array', maxItems: 64, items: CHECK_ITEM } as const;

/**
 * The core's JSON schema: the one place a top-level option is declared. Its default, its
 * TypeScript type (QhcpConfig, via FromSchema), its command-line flag, its row in
 * docs/configuration.md (`npm run docs:config`) and its line in `qhcp config --print` all come
 * from its entry here. To add an option: add a property (with `description`, and `x-qhcp` when
 * it has a flag), then run `npm run docs:config`.
 */
export const CONFIG_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    node: opt({ type: 'string', minLength: 1, maxLength: 128 }, "This process's name, sent in HELLO/ACK and shown in alerts.", { kind: 'name', flag: BOTH, defaultText: 'hostname:port' }),
    servers: opt(
      {
        type: 'array',
        default: [],
        maxItems: 10000,
        items: {
          anyOf: [
            { type: 'string', minLength: 1, maxLength: 300 },
            {
              type: 'object',
              additionalProperties: false,
              required: ['address'],
              properties: { address: { type: 'string', minLength: 1, maxLength: 300 }, weight: { type: 'number', minimum: 0, maximum: 1000 } },
            },
          ],
        },
      },
      'Load balancer: the servers to check. A bare host uses port 4243; `weight` (0-1000, default 1) is read by weighted balancers. Required to run a load balancer (here or as a flag).',
      { kind: 'list', flag: { ...LB, arg: 'list', help: 'comma-separated host:port list of servers (a bare host uses port 4243)' } },
    ),
    loadbalancerHost: opt({ type: 'string', minLength: 1, default: '127.0.0.1' }, 'Load balancer: address of the query port (STATUS, PICK). Loopback by default: anyone who reaches the port reads every backend; bind it wider only with an auth plugin verifying query clients (jwt verifyQueries), else a warning is logged.', { kind: 'ip', flag: LB }),
    loadbalancerPort: opt(port(DEFAULT_LOADBALANCER_PORT), 'Load balancer: UDP port for queries (0: any free port).', { kind: 'port', flag: LB }),
    serverIp: opt({ type: 'string', minLength: 1, default: '0.0.0.0' }, 'Server: address to listen on.', { kind: 'ip', flag: SERVER }),
    serverPort: opt(port(DEFAULT_SERVER_PORT), 'Server: UDP port to listen on (0: any free port).', { kind: 'port', flag: SERVER }),
    maxFailAttempts: opt({ type: 'integer', minimum: 1, maximum: 1000, default: 3 }, 'Load balancer: consecutive failed checks before a server is DOWN.', { flag: LB }),
    riseAttempts: opt({ type: 'integer', minimum: 1, maximum: 1000, default: 1 }, 'Load balancer: consecutive good checks before a DOWN server is UP again.', { flag: LB }),
    checkInterval: opt(seconds(0.01, 86400, 10), 'Load balancer: time between checks of a server, and between status prints.', { kind: 'seconds', flag: LB }),
    checkTimeout: opt({ type: 'number', minimum: 0.005, maximum: 3600 }, 'Load balancer: a check (connect, HELLO, HEALTH_REQUEST) that takes longer fails. Must be shorter than checkInterval.', {
      kind: 'seconds',
      flag: LB,
      defaultText: 'half of checkInterval, at most 5',
    }),
    reconnectInterval: opt(seconds(0.01, 86400, 30), 'Load balancer: time between reconnect attempts to a DOWN server.', { kind: 'seconds', flag: LB }),
    jitter: opt({ type: 'number', minimum: 0, maximum: 0.5, default: 0.1 }, 'Load balancer: each check time is spread randomly by up to this fraction of the interval.', { kind: 'fraction', flag: LB }),
    certFile: opt({ type: 'string', minLength: 1 }, 'Server: its TLS certificate (PEM); without it and keyFile, an in-memory self-signed one. Load balancer: the query port\'s certificate (file only).', { kind: 'path', flag: { ...SERVER, help: 'TLS certificate, PEM (with --key-file; without both a self-signed one is made in memory)' } }),
    keyFile: opt({ type: 'string', minLength: 1 }, 'The private key (PEM) for certFile.', { kind: 'path', flag: { ...SERVER, help: 'TLS private key, PEM (with --cert-file)' } }),
    caFile: opt({ type: 'string', minLength: 1 }, 'Load balancer: CA or server certificate to verify servers with; without it servers are not verified (logged).', { kind: 'path', flag: { ...LB, name: '--cert-file', help: 'CA or server certificate (PEM) to verify servers with (without it servers are not verified)' } }),
    serverName: opt({ type: 'string', minLength: 1 }, 'Load balancer: the name server certificates must carry.', { kind: 'name', flag: LB, defaultText: 'the address host' }),
    drainGrace: opt(seconds(0, 600, 2), 'Server: on SIGTERM, how long load balancers get after DRAIN before connections close.', { kind: 'seconds', flag: SERVER }),
    helloTimeout: opt(seconds(0.05, 600, 5), 'Both: a connection that sends no HELLO in time is closed with HELLO_TIMEOUT.', { kind: 'seconds', flag: BOTH }),
    idleTimeout: opt(seconds(0.5, 3600, 30), 'Both: QUIC idle timeout.', { kind: 'seconds', flag: BOTH }),
    keepAlive: opt(seconds(0, 3600, 5), 'Load balancer: QUIC keep-alive on connections to servers (0: off).', { kind: 'seconds' }),
    maxConnections: opt({ type: 'integer', minimum: 1, maximum: 1_000_000, default: 1024 }, 'Both: concurrent connections accepted; more are refused with TOO_MANY_CONNECTIONS.', { flag: SERVER }),
    maxPendingHandshakes: opt({ type: 'integer', minimum: 1, maximum: 100_000, default: 128 }, 'Both: handshakes in progress, and connections not yet past HELLO, each at most this.', { flag: SERVER }),
    maxFrameBytes: opt({ type: 'integer', minimum: 1024, maximum: 16 * 1024 * 1024, default: 65536 }, 'Both: the largest frame payload accepted (FRAME_TOO_LARGE beyond).', { kind: 'bytes', flag: BOTH }),
    maxConnectionsPerSource: opt({ type: 'integer', minimum: 1, maximum: 1_000_000, default: 256 }, 'Both (agent, query port): concurrent connections from one IP address; more are refused with TOO_MANY_CONNECTIONS.', { flag: SERVER }),
    sessionIdleTimeout: opt(seconds(0.1, 86400, 60), 'Both (agent, query port): a session past HELLO that sends nothing for this long is closed with 303 SESSION_IDLE (an agent session receiving reports at least this often is not idle).', { kind: 'seconds', flag: SERVER }),
    maxUnreadBytes: opt({ type: 'integer', minimum: 65536, maximum: 1024 * 1024 * 1024, default: 256 * 1024 }, 'Both: output a peer has not read on one connection; past it the next answer is not queued and the session is closed with 302 SLOW_CONSUMER.', { kind: 'bytes' }),
    maxUnreadBytesTotal: opt({ type: 'integer', minimum: 65536, maximum: 16 * 1024 * 1024 * 1024, default: 32 * 1024 * 1024 }, 'Both: the same summed over every connection of the process.', { kind: 'bytes' }),
    maxStreams: opt({ type: 'integer', minimum: 1, maximum: 100, default: 2 }, 'Both: QUIC bidirectional streams a peer may open; any beyond the control stream is refused with EXTRA_STREAM.'),
    sampleInterval: opt(seconds(0.05, 3600, 1), 'Server: how often the `collect` hook runs in the background (metric plugins may declare slower rates).', { kind: 'seconds', flag: SERVER }),
    pluginTimeout: opt(seconds(0.01, 600, 2), "Both: how long one async plugin tap (and a plugin's `apply`) may take before it is cut off and logged.", { kind: 'seconds', flag: BOTH }),
    reportInterval: opt(
      seconds(0, 3600, 0),
      'Load balancer: push mode, servers send a HEALTH_REPORT this often (asked for with CONFIG_UPDATE) and each one counts as a check; 0: the load balancer polls with HEALTH_REQUEST every checkInterval.',
      { kind: 'seconds', flag: LB },
    ),
    status: opt({ enum: ['auto', 'table', 'lines', 'json', 'none'], default: 'auto' }, 'Load balancer: the status output (auto: a table redrawn every check interval on a terminal, lines otherwise). Lines and JSON print a server when it changes, plus a full summary every `statusSummary` seconds.', { flag: LB }),
    statusSummary: opt(
      seconds(0, 86400, 60),
      'Load balancer, `lines` and `json` status: seconds between full summaries (a server that changes prints at once); 0: every server every check interval.',
      { kind: 'seconds', flag: { ...LB, help: 'lines/json status: seconds between full summaries, changes print at once; 0 = every interval' } },
    ),
    degraded: opt(
      { enum: ['fallback', 'always', 'never'], default: 'fallback' },
      'Load balancer: how balancers use DEGRADED backends: `fallback` only when no UP backend is left (as Envoy), `always` like UP ones, `never`.',
      { flag: LB },
    ),
    logLevel: opt({ enum: ['debug', 'info', 'warn', 'error', 'silent'], default: 'info' }, 'Both: the least severe log line written (stderr).', { flag: BOTH }),
    http: opt({ type: 'string', minLength: 1, maxLength: 300 }, 'The HTTP listener: status page, `/metrics` and admin API on the load balancer; `/metrics` and `/api/status` on a server ([operations.md](operations.md#http-listener)). `"host:port"`, `":port"` (127.0.0.1) or `"off"`. A configured address that cannot be bound stops start-up; the load balancer\'s default address in use is a warning.', {
      flag: { ...BOTH, arg: 'host:port|off', help: 'HTTP listener: status page, /metrics, admin API (default: load balancer 127.0.0.1:4280, server off)' },
      defaultText: 'load balancer `127.0.0.1:4280`, server off',
    }),
    httpTokenFile: opt({ type: 'string', minLength: 1 }, 'Load balancer: file whose first line (16+ printable characters) is the bearer token of the admin API. Without it the admin API is off (writes answer 403).', {
      kind: 'path',
      flag: { ...LB, help: 'file with the bearer token of the HTTP admin API (optional; without it the admin API is off)' },
    }),
    stateFile: opt({ type: 'string', minLength: 1 }, "Both: a file keeping runtime admin changes across restarts. Load balancer: backends added or removed, DRAIN/MAINT, weights, applied again at start-up ([operations.md](operations.md#state-file)). Server: the operator's admin state and weight (`qhcp drain`, `maint`, `ready`, `weight`); `adminState` / `weight` given at start win over it.", {
      kind: 'path',
      flag: { ...BOTH, help: 'file keeping runtime admin changes across restarts (optional; default: none)' },
    }),
    queryRate: opt({ type: 'number', minimum: 0, maximum: 1_000_000, default: 100 }, 'Load balancer: STATUS/PICK queries a second per query-port connection (0: unlimited); more wait their turn, and a connection with more than 32 waiting is closed ([operations.md](operations.md#query-rate-limits)).', { flag: LB }),
    queryRateTotal: opt({ type: 'number', minimum: 0, maximum: 1_000_000, default: 500 }, "Load balancer: STATUS/PICK queries a second over all query-port connections together (0: unlimited), so a flood cannot take the health checks' CPU.", { flag: LB }),
    defaults: opt({ type: 'boolean', default: true }, "Add each role's default plugin for a family the list leaves out."),
    checks: opt(CHECK_LIST, "Server: the checks of the agent's default service (see Service checks below); its verdict is the agent's own."),
    services: opt(
      { type: 'object', maxProperties: 32, propertyNames: { pattern: '^[A-Za-z0-9_.-]{1,64}$' }, additionalProperties: CHECK_LIST },
      'Server: named services (at most 32, names `^[A-Za-z0-9_.-]{1,64}$`), each with its list of checks; a load balancer backend `host:4243/web` follows service `web`.',
    ),
    controlSocket: opt(
      { anyOf: [{ type: 'string', minLength: 1, maxLength: 1024 }, { const: false }] },
      'Server: the Unix socket `qhcp drain`, `maint`, `ready`, `weight` and `health` talk to (mode 0600); by default `$XDG_RUNTIME_DIR/qhcp/<port>.sock`, else `/run/qhcp/<port>.sock` as root, else `<tmp>/qhcp-<uid>/<port>.sock`; `false`: none.',
      { kind: 'path', flag: { ...SERVER, arg: 'path' }, defaultText: 'one per port, see the meaning' },
    ),
    adminState: opt({ enum: ['READY', 'DRAIN', 'MAINT', 'ready', 'drain', 'maint'] }, 'Server: the admin state at start (wins over the state file; READY when neither says).', { flag: SERVER }),
    weight: opt({ type: 'integer', minimum: 0, maximum: 256 }, 'Server: the weight reported to load balancers at start, 0-256 (wins over the state file; 100 when neither says).', { flag: SERVER }),
    plugins: opt(
      {
        type: 'array',
        default: [],
        items: {
          anyOf: [
            { type: 'string', minLength: 1 },
            { type: 'array', minItems: 1, maxItems: 2, items: [{ type: 'string' }, { type: 'object' }] },
            { type: 'object' },
          ],
        },
      },
      'The plugins to load, in order (taps run in this order).',
    ),
  },
} as const;

type ConfigSchema = typeof CONFIG_SCHEMA;
/** A config key. */
export type ConfigKey = keyof ConfigSchema['properties'];

/** The merged, validated configuration (defaults filled in); typed from CONFIG_SCHEMA. */
export type QhcpConfig = Omit<FromSchema<ConfigSchema>, 'plugins'> & { plugins: PluginEntry[] };
/** What a config file (or flags) may give: every key optional; typed from CONFIG_SCHEMA. */
export type QhcpUserConfig = Omit<FromSchema<ConfigSchema, 'in'>, 'plugins'> & { plugins?: PluginEntry[] };
/** One entry of `servers`. */
export type ServerEntry = Exclude<QhcpConfig['servers'][number], string>;

/** Types a config file written in TypeScript: `export default defineConfig({...})`. */
export function defineConfig(config: QhcpUserConfig): QhcpUserConfig {
  return config;
}

/** CONFIG_SCHEMA as plain JSON schema, without the `x-qhcp` annotations (for editors, docs). */
export function jsonSchema(): object {
  return JSON.parse(JSON.stringify(CONFIG_SCHEMA, (k, v: unknown) => (k === 'x-qhcp' ? undefined : v))) as object;
}

/** An option's `x-qhcp` annotation. */
export function optionMeta(key: ConfigKey): OptionMeta {
  return (CONFIG_SCHEMA.properties[key] as { 'x-qhcp'?: OptionMeta })['x-qhcp'] ?? {};
}

// verbose: errors carry their parent schema, so an unknown key can suggest the known one.
const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, verbose: true });
const validateCore = ajv.compile(CONFIG_SCHEMA);

/** "/plugins/1/options/interval" -> "plugins[1].options.interval". */
export function jsonPath(instancePath: string, prefix = ''): string {
  let out = prefix;
  for (const part of instancePath.split('/').slice(1)) {
    const p = part.replace(/~1/g, '/').replace(/~0/g, '~');
    out += /^\d+$/.test(p) ? `[${p}]` : out ? `.${p}` : p;
  }
  return out || '(root)';
}

/**
 * One line per problem, e.g. `plugins[1].options.interval: must be >= 0.1 (got -3)`.
 * An anyOf/oneOf whose branches all fail on the value's type becomes one line
 * (`servers[0]: must be string or object (got 5)`); when a branch matched the type, only
 * that branch's own errors are listed.
 */
export function describeAjvErrors(errors: ErrorObject[] | null | undefined, data: unknown, prefix = ''): string[] {
  const all = errors ?? [];
  const out = new Set<string>();
  const dropped = new Set<ErrorObject>();
  const summary = new Map<ErrorObject, string>();
  for (const a of all) {
    if (a.keyword !== 'anyOf' && a.keyword !== 'oneOf') continue;
    const base = `${a.schemaPath}/`;
    const branches = new Map<string, ErrorObject[]>();
    for (const e of all) {
      if (e === a || !e.schemaPath.startsWith(base)) continue;
      if (e.instancePath !== a.instancePath && !e.instancePath.startsWith(`${a.instancePath}/`)) continue; // another item, same schema
      const b = e.schemaPath.slice(base.length).split('/')[0]!;
      branches.set(b, [...(branches.get(b) ?? []), e]);
    }
    const typeMiss = (errs: ErrorObject[]) => errs.find((e) => e.keyword === 'type' && e.instancePath === a.instancePath);
    const missed = [...branches.values()].filter((errs) => typeMiss(errs));
    for (const errs of missed) for (const e of errs) dropped.add(e);
    if (branches.size > 0 && missed.length === branches.size) {
      const types = missed.flatMap((errs) => [(typeMiss(errs)!.params as { type: string | string[] }).type].flat());
      summary.set(a, `must be ${[...new Set(types)].join(' or ')}`);
    }
  }
  for (const e of all) {
    if (dropped.has(e) || e.keyword === 'if') continue;
    if ((e.keyword === 'anyOf' || e.keyword === 'oneOf') && !summary.has(e) && !(e.params as { passingSchemas?: unknown }).passingSchemas) continue;
    let path = jsonPath(e.instancePath, prefix);
    let msg = summary.get(e) ?? e.message ?? 'is invalid';
    if (e.keyword === 'additionalProperties') {
      const extra = (e.params as { additionalProperty: string }).additionalProperty;
      path = path === '(root)' ? extra : `${path}.${extra}`;
      const known = Object.keys((e.parentSchema as { properties?: object } | undefined)?.properties ?? {});
      const hint = closest(extra, known);
      msg = `is not a known option${hint ? ` (did you mean ${hint}?)` : ''}`;
    } else if (e.keyword === 'enum') {
      msg = `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
    }
    const got = e.keyword === 'additionalProperties' || e.keyword === 'required' ? undefined : valueAt(data, e.instancePath);
    out.add(`${path}: ${msg}${got !== undefined ? ` (got ${JSON.stringify(got)})` : ''}`);
  }
  return [...out];
}

/** The known key a mistyped one most likely meant: same letters ignoring case, - and _, or at most 2 edits away. */
export function closest(word: string, known: string[]): string | undefined {
  const norm = (s: string) => s.toLowerCase().replace(/[-_]/g, '');
  const w = norm(word);
  let best: string | undefined;
  let bestD = w.length >= 8 ? 3 : w.length >= 5 ? 2 : 1; // short keys: no edits, only case and dashes
  for (const k of known) {
    const d = editDistance(w, norm(k));
    if (d < bestD) [best, bestD] = [k, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 2) return 3;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

function valueAt(data: unknown, pointer: string): unknown {
  let cur: unknown = data;
  for (const part of pointer.split('/').slice(1)) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, unknown>)[part.replace(/~1/g, '/').replace(/~0/g, '~')];
  }
  if (typeof cur === 'object' && cur !== null) return undefined;
  return cur;
}

export type Source = 'default' | 'flag' | `file ${string}`;

export interface LoadedConfig {
  config: Readonly<QhcpConfig>;
  /** Where each top-level value came from. */
  sources: Record<string, Source>;
  /** The file it came from, if any. */
  file: string | undefined;
}

/**
 * Imports a user's module (config file or plugin) by its own syntax, whatever the nearest
 * package.json says: ESM syntax in a directory without `"type": "module"` makes a plain
 * import() fail (ERR_REQUIRE_CYCLE_MODULE), so that case goes through tsx's tsImport.
 */
export async function importUserModule(url: string): Promise<{ default?: unknown }> {
  try {
    return (await import(url)) as { default?: unknown };
  } catch (e) {
    if (!String((e as NodeJS.ErrnoException).code).startsWith('ERR_REQUIRE')) throw e;
    const { tsImport } = await import('tsx/esm/api');
    const mod = (await tsImport(url, import.meta.url)) as { default?: unknown };
    // ESM syntax compiled to CommonJS arrives wrapped once more.
    const inner = mod.default as { __esModule?: boolean; default?: unknown } | undefined;
    return inner?.__esModule ? { default: inner.default } : mod;
  }
}

/** Config files imported so far (a second import is a reload). */
const importedConfigs = new Set<string>();

const importLoader: Loader = async (filepath) => {
  // A reload (SIGHUP) must see the file as it is now, not the module cached when it was first
  // imported: the modification time in the URL makes a changed file a new module. tsx caches a
  // TypeScript file by path whatever the query says, so a reloaded .ts goes into a fresh tsx
  // namespace (each tsImport call has its own) instead.
  const mtime = statSync(filepath).mtimeMs;
  const url = `${pathToFileURL(filepath).href}?mtime=${mtime}`;
  let mod: { default?: unknown };
  if (importedConfigs.has(filepath) && /\.[mc]?ts$/.test(filepath)) {
    const { tsImport } = await import('tsx/esm/api');
    const ns = (await tsImport(url, { parentURL: import.meta.url })) as { default?: { __esModule?: boolean; default?: unknown } };
    mod = ns.default?.__esModule ? { default: ns.default.default } : (ns as { default?: unknown });
  } else mod = await importUserModule(url);
  importedConfigs.add(filepath);
  return mod.default ?? mod;
};

/**
 * Finds the config file: `--config FILE`, or qhcp.config.{ts,js,mjs,json}, .qhcprc(.json),
 * package.json#qhcp in the working directory.
 * @throws LocalError QHCP_ERR_CONFIG_LOAD
 */
export async function findConfigFile(opts: { file?: string; cwd?: string }): Promise<{ data: unknown; file: string | undefined }> {
  const explorer = cosmiconfig('qhcp', {
    // First found wins: the dedicated file, then the rc file, then package.json#qhcp.
    searchPlaces: [
      'qhcp.config.ts',
      'qhcp.config.mts',
      'qhcp.config.js',
      'qhcp.config.mjs',
      'qhcp.config.json',
      '.qhcprc',
      '.qhcprc.json',
      '.qhcprc.yaml',
      'package.json',
    ],
    loaders: { '.ts': importLoader, '.mts': importLoader, '.js': importLoader, '.mjs': importLoader },
    searchStrategy: 'none',
  });
  try {
    const result = opts.file ? await explorer.load(resolve(opts.cwd ?? process.cwd(), opts.file)) : await explorer.search(opts.cwd ?? process.cwd());
    if (!result) return { data: undefined, file: undefined };
    return { data: result.config, file: result.filepath };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const what = opts.file ?? 'configuration file';
    throw new LocalError('QHCP_ERR_CONFIG_LOAD', code === 'ENOENT' ? `config file ${what} not found` : `cannot load ${what}: ${errorText(e)}`, { cause: e });
  }
}

/**
 * Merges defaults < file < flags, validates, freezes.
 * @throws ConfigError listing every problem by path
 */
export function buildConfig(fileData: unknown, file: string | undefined, flags: QhcpUserConfig): LoadedConfig {
  if (fileData !== undefined && (fileData === null || typeof fileData !== 'object' || Array.isArray(fileData))) {
    throw new ConfigError([`${file ?? 'config'}: must export an object`]);
  }
  const fromFile = (fileData ?? {}) as Record<string, unknown>;
  const merged: Record<string, unknown> = structuredCloneSafe(fromFile);
  const sources: Record<string, Source> = {};
  for (const k of Object.keys(fromFile)) sources[k] = `file ${file}`;
  for (const [k, v] of Object.entries(flags)) {
    if (v === undefined) continue;
    merged[k] = v;
    sources[k] = 'flag';
  }
  if (!validateCore(merged)) {
    throw new ConfigError(describeAjvErrors(validateCore.errors, merged));
  }
  for (const k of Object.keys(CONFIG_SCHEMA.properties)) if (!(k in sources) && k in merged) sources[k] = 'default';
  const config = merged as unknown as QhcpConfig;
  if (config.checkTimeout !== undefined && config.checkTimeout >= config.checkInterval) {
    throw new ConfigError([`checkTimeout: must be shorter than checkInterval (${config.checkInterval} s) (got ${config.checkTimeout})`]);
  }
  if (file) {
    // Paths in a config file are relative to the file.
    for (const k of ['certFile', 'keyFile', 'caFile', 'httpTokenFile', 'stateFile'] as const) {
      if (sources[k]?.startsWith('file ') && config[k]) config[k] = resolve(dirname(file), config[k]!);
    }
    if (sources.controlSocket?.startsWith('file ') && typeof config.controlSocket === 'string') config.controlSocket = resolve(dirname(file), config.controlSocket);
  }
  return { config: deepFreeze(config), sources, file };
}

/** The effective check timeout (s): given, or half the interval capped at 5 s. */
export function checkTimeoutOf(c: Pick<QhcpConfig, 'checkTimeout' | 'checkInterval'>): number {
  return c.checkTimeout ?? Math.min(c.checkInterval / 2, 5);
}

/** Clones plain data but keeps functions and class instances (inline plugins) as they are. */
function structuredCloneSafe(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) {
    out[k] = Array.isArray(v) ? v.slice() : v && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype ? { ...v } : v;
  }
  return out;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object' && !Object.isFrozen(o)) {
    const proto = Object.getPrototypeOf(o);
    if (proto !== Object.prototype && proto !== Array.prototype && proto !== null) return o;
    // Inline plugins keep their own mutable state.
    if (typeof (o as { apply?: unknown }).apply === 'function') return o;
    Object.freeze(o);
    for (const v of Object.values(o as object)) deepFreeze(v);
  }
  return o;
}
