/**
 * The core's configuration schema: the one place a top-level option is declared (its default,
 * type, flag and documentation), and the types derived from it. Imports nothing heavy, so the
 * CLI can build its flags without loading the validator; config.ts finds, merges and validates.
 */
import type { QhcpPlugin } from '../plugin/loader.ts';
import type { PluginUse } from '../plugin/define.ts';
import type { FromSchema } from './schema-types.ts';
import { PANIC_THRESHOLD_DEFAULT, SLOW_START_SCHEMA } from '../balance/options.ts';

import { DEFAULT_LOADBALANCER_PORT, DEFAULT_SERVER_PORT } from './ports.ts';

export { DEFAULT_LOADBALANCER_PORT, DEFAULT_SERVER_PORT };

/** A plugin in the config's list: a built-in name, [name or module, options], {name|module, options}, or an inline plugin object. */
export type PluginEntry =
  | string
  | [string, Record<string, unknown>?]
  | { name?: string; module?: string; options?: Record<string, unknown> }
  | QhcpPlugin
  | PluginUse;

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
    checkTimeout: opt({ type: 'number', minimum: 0.005, maximum: 3600 }, 'Load balancer: a check (HEALTH_REQUEST, or a pushed report) that takes longer fails; a new connection (handshake, HELLO) gets this but at least 1 s. Must be shorter than checkInterval.', {
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
    sessionIdleTimeout: opt(seconds(0.1, 86400, 60), 'Both (agent, query port): a session past HELLO that sends nothing for this long is closed with 303 SESSION_IDLE (an agent session receiving reports at least this often is not idle; a WATCH session is not idle).', { kind: 'seconds', flag: SERVER }),
    maxUnreadBytes: opt({ type: 'integer', minimum: 65536, maximum: 1024 * 1024 * 1024, default: 256 * 1024 }, 'Both: output a peer has not read on one connection; past it the next answer is not queued and the session is closed with 302 SLOW_CONSUMER.', { kind: 'bytes' }),
    slowConsumerTimeout: opt(seconds(0.1, 3600, 5), 'Both (agent, query port): a peer owed more than 128 KiB of answers that reads none of them for this long is closed with 302 SLOW_CONSUMER; until then it is held by QUIC flow control (nothing more is read from it).', { kind: 'seconds' }),
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
    cluster: opt(
      {
        anyOf: [
          { type: 'string', minLength: 1, maxLength: 1000 },
          {
            type: 'object',
            additionalProperties: false,
            required: ['url'],
            properties: {
              url: { type: 'string', minLength: 1, maxLength: 1000 },
              replicas: { type: 'integer', minimum: 1, maximum: 16 },
              ttl: { type: 'number', minimum: 0.3, maximum: 600 },
              group: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,64}$' },
            },
          },
        ],
      },
      'Load balancer: join a group of load balancers sharing one Redis ([operations.md](operations.md#load-balancer-groups)): each backend is checked by `replicas` members (default 2) and every member shows them all. A Redis URL (`redis://[:password@]host:6379/0`, `rediss://` for TLS) with optional `?replicas=2&ttl=3&group=qhcp`, or `{ url, replicas, ttl, group }`; `ttl` (seconds, default 3) is the heartbeat TTL, `group` the key prefix. Every member needs its own `node` name and the same `servers`.',
      { kind: 'name', flag: { ...LB, arg: 'redis-url', help: 'join a load balancer group through Redis: redis://host:6379/0[?replicas=2&ttl=3&group=qhcp] (optional; default: none)' } },
    ),
    panicThreshold: opt(
      { type: 'number', minimum: 0, maximum: 100, default: PANIC_THRESHOLD_DEFAULT },
      'Load balancer (and `qhcp/client` picks): panic mode. When fewer than this percent of the backends whose health is known (UP, DEGRADED, DOWN) are healthy, but one still is, picks go to all of them rather than overload the few left (as Envoy\'s `healthy_panic_threshold`); logged and alerted when it engages and ends, shown by `qhcp status`. 0: off ([plugins-builtin.md](plugins-builtin.md#slow-start-and-panic)).',
      { flag: { ...LB, arg: 'percent' } },
    ),
    slowStart: opt(
      SLOW_START_SCHEMA,
      'Load balancer (and `qhcp/client` picks): slow start, as Envoy\'s `slow_start_config`. A backend that comes UP from DOWN, DRAINING or MAINT (with `newBackends`, also one first seen) gets weight × max(minWeightPercent / 100, (elapsed / window) ^ (1 / aggression)) for `window` seconds, whatever the balancer; shown as `effectiveWeight` by `qhcp status`. `{ window: 30, aggression: 1, minWeightPercent: 10, newBackends: false }`; window 0: off ([plugins-builtin.md](plugins-builtin.md#slow-start-and-panic)).',
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
    watchQueue: opt({ type: 'integer', minimum: 1, maximum: 10_000, default: 64 }, 'Load balancer: changes waiting per WATCH client that reads too slowly; past it they are dropped and the client gets a fresh full view once it reads again ([protocol.md](protocol.md#watch-0x10)).', { flag: LB }),
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

/** The effective check timeout (s): given, or half the interval capped at 5 s. */
export function checkTimeoutOf(c: Pick<QhcpConfig, 'checkTimeout' | 'checkInterval'>): number {
  return c.checkTimeout ?? Math.min(c.checkInterval / 2, 5);
}

