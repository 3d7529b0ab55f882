/**
 * Every hook of the qhcp core, declared once. Plugins tap these; the core calls them.
 * The hook kind is the contract (see docs/plugins.md):
 *   Series = lifecycle in order, Parallel = fan-out, Bail = first answer wins,
 *   Waterfall = each tap transforms the value, Sync = cheap notification on the hot path.
 * Each tap is guarded (guardHooks): a tap that throws, rejects or outlasts the plugin timeout
 * is logged as a PluginError and the hook goes on with a defined fallback.
 */
import { AsyncParallelHook, AsyncSeriesBailHook, AsyncSeriesHook, SyncBailHook, SyncHook, SyncWaterfallHook } from 'tapable';
import type { Tap } from 'tapable';
import { PluginError, WIRE_ERRORS, type WireErrorName } from '../errors.ts';
import { FIELD_LIMITS, METRIC_NAME, metricRange, type Message, type Metrics } from '../protocol/messages.ts';
import type { BackendView } from '../health/backend.ts';
import type { HealthState } from '../health/states.ts';
import type { Logger } from '../util/log.ts';
import type { QhcpConfig } from '../config/config.ts';
import { withTimeout } from '../util/timeout.ts';
import type { Direction } from '../protocol/session.ts';
import type { CheckKind } from '../check/types.ts';

/** A metric a plugin reports: declared once so status, docs and CONFIG_UPDATE can name it. */
export interface MetricDefinition {
  name: string;
  unit: string;
  help: string;
  /** The plugin that reports it. */
  plugin: string;
  /** How often the plugin samples it at most (ms); the core never asks more often. */
  sampleIntervalMs?: number;
}

/** Metric names the protocol carries (the one rule lives in messages.ts; docs/protocol.md). */
export { METRIC_NAME };

/**
 * `value` clamped into the documented range of metric `name` (messages.ts METRIC_RANGES): an
 * agent never sends a value its load balancers would reject with ERROR 104 because a plugin
 * overshot (a CPU reading of 100.0001 %).
 */
export function clampMetric(name: string, value: number): number {
  const r = metricRange(name);
  if (!r) return value;
  return Math.min(r.max ?? Infinity, Math.max(r.min, value));
}

/** The report that `collect` taps fill in. */
export class MetricsReport {
  readonly values: Metrics = {};
  /** Per metric: when it was sampled (epoch ms); the report's age is its oldest sample. */
  readonly sampledAt: Record<string, number> = {};
  /** Metrics copied from the previous report because their `sampleIntervalMs` has not passed. */
  readonly carried = new Set<string>();
  private count = 0;

  /** Whether `name` should be sampled now: false while its declared sample interval has not passed. */
  due(name: string): boolean {
    return !this.carried.has(name);
  }

  /**
   * Sets one metric; a non-finite value is ignored (no data).
   * @throws TypeError for a name the protocol cannot carry; RangeError past 256 metrics
   */
  set(name: string, value: number, sampledAt = Date.now()): void {
    if (typeof name !== 'string' || !METRIC_NAME.test(name)) throw new TypeError(`metric name ${JSON.stringify(name)} is invalid: letters, digits, _ . : - (at most 128, not starting with a digit)`);
    if (typeof value !== 'number' || !Number.isFinite(value)) return;
    value = clampMetric(name, value);
    if (!(name in this.sampledAt)) {
      if (this.count >= FIELD_LIMITS.maxMetrics) throw new RangeError(`more than ${FIELD_LIMITS.maxMetrics} metrics in one report`);
      this.count++;
    }
    this.values[name] = value;
    this.sampledAt[name] = sampledAt;
    this.carried.delete(name);
  }

  /** Copies `name` (value and sample time) from an earlier report without resampling it. */
  carry(from: MetricsReport, name: string): void {
    const at = from.sampledAt[name];
    if (at === undefined || !(name in from.values)) return;
    this.set(name, from.values[name]!, at);
    this.carried.add(name);
  }
}

/** What `report` taps returned, reduced to what a HEALTH_RESPONSE can carry (else `fallback`). */
export function cleanMetrics(m: unknown, fallback: Metrics): Metrics {
  if (!m || typeof m !== 'object' || Array.isArray(m)) return fallback;
  const out: Metrics = {};
  let n = 0;
  for (const [k, v] of Object.entries(m)) {
    if (n >= FIELD_LIMITS.maxMetrics) break;
    if (METRIC_NAME.test(k) && typeof v === 'number' && Number.isFinite(v)) {
      out[k] = clampMetric(k, v);
      n++;
    }
  }
  return out;
}

/** `metricDefinitions` output without malformed entries or repeated names (the first wins); drops are logged. */
export function cleanDefinitions(defs: unknown, logger: Logger): MetricDefinition[] {
  const out: MetricDefinition[] = [];
  const seen = new Set<string>();
  for (const d of Array.isArray(defs) ? (defs as Partial<MetricDefinition>[]) : []) {
    const name = d?.name;
    if (typeof name !== 'string' || !METRIC_NAME.test(name) || seen.has(name) || out.length >= FIELD_LIMITS.maxMetrics) {
      logger.warn('metric definition ignored (invalid name, repeated, or over the limit)', { metric: String(name), plugin: String(d?.plugin) });
      continue;
    }
    seen.add(name);
    out.push({ unit: '', help: '', plugin: '', ...d, name } as MetricDefinition);
  }
  return out;
}

export interface AuthRequest {
  token: string | undefined;
  /** Node name the peer gave in HELLO. */
  node: string;
  remote: string;
  role: 'checker' | 'query';
  /**
   * The certificate chain the peer presented in the TLS handshake (DER, its own first); empty
   * when it presented none or none was asked for (a `tls` tap sets `requestClientCert`).
   */
  certificates?: readonly Uint8Array[];
}
/** `expiresAt` (epoch ms): the credentials' end; the session is closed with AUTH_EXPIRED then. */
export type AuthVerdict = { ok: true; subject?: string; expiresAt?: number } | { ok: false; kind: WireErrorName; reason: string };

/** What the server acts on for a `verify` answer: undefined abstains; anything malformed denies (fail closed). */
export function toVerdict(v: unknown): AuthVerdict | undefined {
  if (v === undefined) return undefined;
  const o = (v && typeof v === 'object' ? v : {}) as { ok?: unknown; kind?: unknown; reason?: unknown; subject?: unknown };
  if (o.ok === true) {
    const exp = (v as { expiresAt?: unknown }).expiresAt;
    return { ok: true, ...(typeof o.subject === 'string' ? { subject: o.subject } : {}), ...(typeof exp === 'number' && Number.isFinite(exp) ? { expiresAt: exp } : {}) };
  }
  if (o.ok === false && typeof o.kind === 'string' && Object.hasOwn(WIRE_ERRORS, o.kind)) {
    return { ok: false, kind: o.kind as WireErrorName, reason: typeof o.reason === 'string' ? o.reason : o.kind };
  }
  return { ok: false, kind: 'INTERNAL_ERROR', reason: 'auth plugin returned an invalid verdict' };
}

/** TLS settings auth plugins add through the `tls` hook (mutual TLS: plugins/auth/mtls.ts). */
export interface TlsSettings {
  /** Server: ask every load balancer for a certificate; its chain reaches `verify` as `certificates`. */
  requestClientCert: boolean;
  /** Load balancer: the certificate (PEM, own first) and key presented when a server asks for one. */
  clientCert?: { cert: string; key: string };
}

export interface CredentialsRequest {
  /** The server address being connected to (host:port). */
  server: string;
  /** This load balancer's node name. */
  node: string;
}

/** What balancers and alerts see of one backend (read-only): core/health/backend.ts. */
export type { BackendView };

export interface PickRequest {
  /** The backends a balancer may choose: UP ones, in configuration order (DEGRADED ones too as config `degraded` says: by default only when no UP one is left). */
  readonly servers: readonly BackendView[];
  /** Optional key from the PICK (for affinity strategies). */
  readonly key: string | undefined;
  readonly now: number;
  /**
   * Says why the balancer chose the server it returns (PICK_RESPONSE `why`, e.g. "lowest
   * loadScore 0.12"); the load balancer appends what it was chosen from ("of 3 UP").
   */
  readonly explain?: (why: string) => void;
}

export interface CheckResult {
  ok: boolean;
  latencyMs: number | null;
  metrics: Metrics | null;
  error: string | null;
  at: number;
}

export interface Transition {
  server: string;
  from: HealthState;
  to: HealthState;
  reason: string;
  at: number;
  failures: number;
  successes: number;
  lastError: string | null;
  metrics: Metrics;
}

/**
 * What `sync` taps receive: the whole view (every backend, config order, snapshots that stay
 * valid after the call) and the backends that changed since the last call (all of them on the
 * first call). Called once when the load balancer is ready and then on every change (state,
 * verdict, admin state, weight, reason, metrics), coalesced per event-loop tick.
 */
export interface SyncUpdate {
  readonly view: readonly BackendView[];
  readonly changed: readonly BackendView[];
  /** Addresses that left the view since the last call (removeBackend). */
  readonly removed: readonly string[];
  /** True on the first call. */
  readonly initial: boolean;
  readonly at: number;
}

export type AlertEvent =
  | { kind: 'transition'; node: string; transition: Transition }
  | { kind: 'started' | 'stopped'; node: string; at: number; servers: string[] }
  /**
   * Panic mode engaged (`engaged`) or ended for a pool (core/balance/local.ts): `healthy` of
   * `known` backends healthy against `thresholdPercent`; `servers` are those picks go to now.
   */
  | { kind: 'panic'; node: string; at: number; engaged: boolean; pool: string; service?: string; healthy: number; known: number; thresholdPercent: number; servers: string[] };

export interface SessionInfo {
  id: number;
  remote: string;
  role: 'server' | 'client';
}

/** The core object plugins receive in `apply`. */
export interface CoreLike {
  readonly role: 'server' | 'loadbalancer';
  readonly hooks: Hooks;
  readonly logger: Logger;
  readonly node: string;
  /** The merged, validated configuration (defaults < file < flags), frozen. */
  readonly config: Readonly<QhcpConfig>;
  /** The config file, when one was found. */
  readonly configFile?: string | undefined;
  /** The directory of the config file (the working directory when there is none). */
  readonly configDir: string;
  /** A path from the config (a plugin option) made absolute against configDir; absolute paths are kept. */
  resolvePath(path: string): string;
  /** The UDP port the role listens on, once listening (a server's; 0 or absent before). */
  readonly port?: number;
}

export function createHooks() {
  return Object.freeze({
    /** Before the role listens or connects; a failure aborts start-up. */
    start: new AsyncSeriesHook<[CoreLike]>(['core']),
    /** The role is serving (listening / checks scheduled). */
    ready: new AsyncSeriesHook<[CoreLike]>(['core']),
    /** Shutting down: release timers, sockets, files. */
    stop: new AsyncSeriesHook<[CoreLike]>(['core']),

    /** Server: each metrics plugin appends the metrics it reports. */
    metricDefinitions: new SyncWaterfallHook<[MetricDefinition[]]>(['definitions']),
    /** Server: fill a report (runs in the background sampler, never on a check's path). */
    collect: new AsyncParallelHook<[MetricsReport]>(['report']),
    /** Server: each `check` plugin appends the check kinds it provides (once at start, before checks are built). */
    checkKinds: new SyncWaterfallHook<[CheckKind[]]>(['kinds']),
    /** Server: transform the metrics sent to one session (derive, rename, filter). */
    report: new SyncWaterfallHook<[Metrics, SessionInfo | undefined]>(['metrics', 'session']),

    /** Both, once after `start`: the TLS settings auth plugins need (client certificates). */
    tls: new SyncWaterfallHook<[TlsSettings]>(['settings']),
    /** Load balancer: the token to put in HELLO for a server (first answer wins). */
    credentials: new AsyncSeriesBailHook<[CredentialsRequest], string | undefined>(['request']),
    /** Server: accept or reject a HELLO's credentials (first verdict wins; none = open). */
    verify: new AsyncSeriesBailHook<[AuthRequest], AuthVerdict | undefined>(['request']),

    /** Load balancer: choose one of the UP servers (first answer wins). */
    pick: new SyncBailHook<[PickRequest], BackendView | undefined>(['request']),
    /** Load balancer: a check finished (good or not). */
    checked: new SyncHook<[BackendView, CheckResult]>(['backend', 'result']),
    /** Load balancer: a backend changed state. */
    transition: new SyncHook<[Transition]>(['transition']),

    /**
     * Load balancer: keep an external proxy in step (plugins/sync). Cheap: a tap records what it
     * needs and does its I/O later, queued and retried; checks never wait for it.
     */
    sync: new SyncHook<[SyncUpdate]>(['update']),

    /** Load balancer: something to alert on (transitions, start, stop). */
    alert: new AsyncParallelHook<[AlertEvent]>(['event']),

    /** Both: every frame sent or received, after the DFA accepted it. */
    frame: new SyncHook<[Direction, Message, SessionInfo]>(['direction', 'message', 'session']),
  });
}

export type Hooks = ReturnType<typeof createHooks>;
export type HookName = keyof Hooks;

/**
 * What a failing tap yields: 'skip' continues as if the tap returned nothing (the waterfall
 * keeps its value), 'deny' yields an auth rejection, 'throw' propagates the PluginError.
 */
export const ON_FAIL: Record<HookName, 'skip' | 'deny' | 'throw'> = {
  start: 'throw',
  ready: 'skip',
  stop: 'skip',
  metricDefinitions: 'skip',
  collect: 'skip',
  checkKinds: 'skip',
  report: 'skip',
  tls: 'throw',
  credentials: 'throw',
  verify: 'deny',
  pick: 'skip',
  checked: 'skip',
  transition: 'skip',
  sync: 'skip',
  alert: 'skip',
  frame: 'skip',
};

function fallback(hook: HookName, err: PluginError, args: unknown[]): unknown {
  const mode = ON_FAIL[hook];
  if (mode === 'throw') throw err;
  if (mode === 'deny') return { ok: false, kind: 'INTERNAL_ERROR', reason: `auth plugin ${err.plugin} failed` } satisfies AuthVerdict;
  // Waterfalls pass their first argument on unchanged.
  return hook === 'report' || hook === 'metricDefinitions' || hook === 'checkKinds' ? args[0] : undefined;
}

/**
 * Wraps every tap registered on `hooks` so that one plugin's failure or hang is contained:
 * logged (rate-limited) as a PluginError with the hook and plugin, counted, and replaced by
 * the hook's fallback. Async taps are cut off after `timeoutMs`.
 */
export function guardHooks(hooks: Hooks, logger: Logger, timeoutMs: number, failures: Map<string, number>, onFailure?: (err: PluginError) => void): void {
  for (const name of Object.keys(hooks) as HookName[]) {
    const hook = hooks[name] as unknown as { intercept(i: { register(t: Tap): Tap }): void };
    hook.intercept({
      register(tap: Tap & { fn: (...a: unknown[]) => unknown; type: string }) {
        const fn = tap.fn;
        const plugin = tap.name;
        const report = (err: PluginError) => {
          failures.set(plugin, (failures.get(plugin) ?? 0) + 1);
          onFailure?.(err);
          logger.limited(`plugin:${plugin}:${name}`, err.message, { code: err.code, hook: name, plugin });
        };
        if (tap.type === 'sync') {
          tap.fn = (...args: unknown[]) => {
            try {
              return fn(...args);
            } catch (e) {
              const err = new PluginError('QHCP_ERR_PLUGIN_HOOK', name, plugin, e);
              report(err);
              return fallback(name, err, args);
            }
          };
        } else if (tap.type === 'promise') {
          tap.fn = (...args: unknown[]) =>
            withTimeout(() => fn(...args), timeoutMs, () => new PluginError('QHCP_ERR_PLUGIN_TIMEOUT', name, plugin)).catch((e) => {
              const err = e instanceof PluginError ? e : new PluginError('QHCP_ERR_PLUGIN_HOOK', name, plugin, e);
              report(err);
              return fallback(name, err, args);
            });
        } else if (tap.type === 'async') {
          tap.fn = (...args: unknown[]) => {
            const callback = args.pop() as (err: unknown, result?: unknown) => void;
            let done = false;
            const finish = (err: PluginError | null, result?: unknown) => {
              if (done) return;
              done = true;
              clearTimeout(timer);
              if (!err) return callback(null, result);
              report(err);
              try {
                callback(null, fallback(name, err, args));
              } catch (thrown) {
                callback(thrown);
              }
            };
            const timer = setTimeout(() => finish(new PluginError('QHCP_ERR_PLUGIN_TIMEOUT', name, plugin)), timeoutMs);
            try {
              fn(...args, (e: unknown, r?: unknown) => finish(e ? new PluginError('QHCP_ERR_PLUGIN_HOOK', name, plugin, e) : null, r));
            } catch (e) {
              finish(new PluginError('QHCP_ERR_PLUGIN_HOOK', name, plugin, e));
            }
          };
        }
        return tap;
      },
    });
  }
}
