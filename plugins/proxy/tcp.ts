/**
 * tcp-proxy: a TCP proxy on the load balancer. Each client connection gets a backend from the
 * `pick` hook (the balancer in use), among the backends whose intent is ready (UP or DEGRADED,
 * no drain or maintenance: plugins/sync/common.ts) and that are not ejected; the bytes go both
 * ways with Readable.pipe (backpressure: a slow reader pauses the other side; half-close kept).
 *
 * - DRAINING, MAINT, DOWN (and UNKNOWN) backends get no new connections; existing ones finish.
 * - DEGRADED backends take connections only when no UP one can (`degraded`, as the load balancer's option).
 * - A connection with no bytes either way for `idleTimeoutMs` is closed (a client that sends
 *   nothing too).
 * - A backend that resets mid-stream closes only that client.
 * - Per-backend connection counts feed the `least-connections` balancer (connections.ts).
 * - Passive outlier detection (after Envoy's): `consecutiveFailures` failed connects in a row
 *   eject a backend for `baseEjectionMs` x the number of times it was ejected (at most
 *   `maxEjectionMs`); each `baseEjectionMs` a backend then spends not ejected takes one off
 *   that count again (so a backend that failed once long ago starts from the base time, as
 *   Envoy decrements its ejection multiplier); at most `maxEjectedPercent` of the backends are
 *   ejected at once (at least one). A failed connect is retried on another backend, `retries` times.
 * A backend's service address is its `target` (targets map or portOffset), not the agent's port.
 */
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import { ConfigError } from '../../core/errors.ts';
import { TARGET_SCHEMA, checkTargets, intentOf, targetOf, type TargetOptions } from '../sync/common.ts';
import { connectionCounts, type ConnectionCounts } from './connections.ts';

const PLUGIN_NAME = 'tcp-proxy';

export interface TcpProxyStats {
  accepted: number;
  active: number;
  /** Clients closed because no backend could take them. */
  noBackend: number;
  connectFailures: number;
  ejections: number;
  idleClosed: number;
  /** Connections whose backend side failed (reset, error) after the connect. */
  backendErrors: number;
}

interface Outlier {
  failures: number;
  ejectedUntil: number;
  /** The ejection multiplier: ejections not yet decayed away. */
  times: number;
  /** Up to when time spent not ejected has been taken off `times`. */
  decayedTo: number;
}

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    host: { type: 'string', minLength: 1, maxLength: 253, default: '127.0.0.1', description: 'address to listen on' },
    port: { type: 'integer', minimum: 0, maximum: 65535, default: 0, description: 'TCP port to listen on (0: any free port, logged)' },
    ...TARGET_SCHEMA,
    idleTimeoutMs: { type: 'integer', minimum: 10, maximum: 86_400_000, default: 60_000, description: 'a connection with no bytes either way this long is closed' },
    connectTimeoutMs: { type: 'integer', minimum: 10, maximum: 600_000, default: 2000, description: 'time to connect to a backend before trying another' },
    degraded: { enum: ['fallback', 'always', 'never'], default: 'fallback', description: 'DEGRADED backends: only when no UP one can take the connection ("fallback"), like UP ones ("always"), or never' },
    retries: { type: 'integer', minimum: 0, maximum: 10, default: 2, description: 'other backends tried after a failed connect' },
    maxConnections: { type: 'integer', minimum: 1, maximum: 1_000_000, default: 10_000, description: 'client connections at once at most (more are refused)' },
    stopGraceMs: { type: 'integer', minimum: 0, maximum: 600_000, default: 1000, description: 'on stop, time open connections get to finish before they are closed' },
    outlier: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        consecutiveFailures: { type: 'integer', minimum: 1, maximum: 1000, default: 3, description: 'failed connects in a row that eject a backend' },
        baseEjectionMs: { type: 'integer', minimum: 1, maximum: 86_400_000, default: 10_000, description: 'first ejection time; each further ejection multiplies it, each baseEjectionMs spent not ejected divides the multiplier down by one again' },
        maxEjectionMs: { type: 'integer', minimum: 1, maximum: 86_400_000, default: 300_000, description: 'an ejection never lasts longer' },
        maxEjectedPercent: { type: 'integer', minimum: 0, maximum: 100, default: 50, description: 'share of backends ejected at once at most (at least one; 0: never eject)' },
      },
    },
  },
} as const;

export type TcpProxyOptions = FromSchema<typeof schema>;

/** The plugin's body (definePlugin below). */
export class TcpProxy {
  readonly stats: TcpProxyStats = { accepted: 0, active: 0, noBackend: 0, connectFailures: 0, ejections: 0, idleClosed: 0, backendErrors: 0 };
  private view: readonly BackendView[] = [];
  private server: Server | undefined;
  private core: CoreLike | undefined;
  private counts: ConnectionCounts | undefined;
  private readonly outliers = new Map<string, Outlier>();
  /** @internal Every open socket, both sides, for close(). */
  readonly sockets = new Set<Socket>();
  private stopping = false;
  /** candidates() with nothing excluded, valid until `cachedUntil` or the next view. */
  private cached: BackendView[] | undefined;
  private cachedUntil = 0;
  private readonly targets = new Map<string, { host: string; port: number } | Error>();

  constructor(readonly options: TcpProxyOptions) {
    const problems = checkTargets(options);
    if (problems.length) throw new ConfigError(problems.map((p) => `tcp-proxy: ${p}`));
  }

  get port(): number {
    const a = this.server?.address();
    return a && typeof a === 'object' ? a.port : 0;
  }

  apply(core: CoreLike): void {
    this.core = core;
    this.counts = connectionCounts(core);
    core.hooks.sync.tap(PLUGIN_NAME, (u) => {
      this.view = u.view;
      this.cached = undefined;
      this.targets.clear();
    });
    core.hooks.start.tapPromise(PLUGIN_NAME, () => this.listen());
    core.hooks.stop.tapPromise(PLUGIN_NAME, () => this.close());
  }

  /** Active connections per backend address. */
  connections(address: string): number {
    return this.counts?.get(address) ?? 0;
  }

  /** Whether `address` is ejected now. */
  ejected(address: string, now = Date.now()): boolean {
    return (this.outliers.get(address)?.ejectedUntil ?? 0) > now;
  }

  async listen(): Promise<void> {
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (s) => this.accept(s));
    server.maxConnections = this.options.maxConnections;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: this.options.port, host: this.options.host, backlog: 4096 }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (e) => this.core?.logger.limited('tcp-proxy-error', 'tcp-proxy: listener error', { plugin: PLUGIN_NAME, error: e.message }));
    this.server = server;
    this.core?.logger.info('tcp-proxy listening', { plugin: PLUGIN_NAME, address: `${this.options.host}:${this.port}` });
  }

  async close(): Promise<void> {
    this.stopping = true;
    const server = this.server;
    if (!server) return;
    const closed = new Promise<void>((r) => server.close(() => r()));
    const deadline = Date.now() + this.options.stopGraceMs;
    while (this.sockets.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const s of this.sockets) s.destroy();
    await closed;
    this.server = undefined;
  }

  /** The backends that may take a new connection now, in configuration order. */
  candidates(now = Date.now(), exclude?: ReadonlySet<string>): BackendView[] {
    const ready = this.view.filter((b) => intentOf(b) === 'ready' && !this.ejected(b.address, now) && !exclude?.has(b.address));
    const policy = this.options.degraded;
    if (policy === 'always') return ready;
    const up = ready.filter((b) => String(b.state) !== 'DEGRADED');
    return policy === 'never' || up.length > 0 ? up : ready;
  }

  private choose(now: number, exclude: ReadonlySet<string> | undefined): BackendView | undefined {
    let servers: BackendView[];
    if (exclude === undefined) {
      // The candidates change only with the view or an ejection: kept until either changes.
      if (this.cached === undefined || now >= this.cachedUntil) {
        this.cached = this.candidates(now);
        let until = Infinity;
        for (const o of this.outliers.values()) if (o.ejectedUntil > now && o.ejectedUntil < until) until = o.ejectedUntil;
        this.cachedUntil = until;
      }
      servers = this.cached;
    } else servers = this.candidates(now, exclude);
    if (servers.length === 0) return undefined;
    const chosen = this.core!.hooks.pick.call({ servers, key: undefined, now });
    return chosen && servers.includes(chosen) ? chosen : undefined;
  }

  /** Where `address` forwards to (cached until the next view; an Error when it has none). */
  private target(address: string): { host: string; port: number } | Error {
    let t = this.targets.get(address);
    if (t === undefined) {
      try {
        t = targetOf(address, this.options);
      } catch (e) {
        t = e as Error;
      }
      this.targets.set(address, t);
    }
    return t;
  }

  private accept(client: Socket): void {
    if (this.stopping) {
      client.destroy();
      return;
    }
    this.stats.accepted++;
    this.stats.active++;
    this.sockets.add(client);
    // One object per connection and no closures: the listeners are shared functions that find
    // their connection on the socket (bench/tcp-proxy.ts: a quarter of the per-connection CPU
    // was closures, timers and lookups beyond what a bare pipe does).
    const c = new Conn(this, client);
    (client as ConnSocket)[CONN] = c;
    client.on('error', noop);
    client.on('close', onClientClose);
    // The socket's own idle timer (re-armed by Node on every read and write), not a setTimeout.
    client.setTimeout(this.options.idleTimeoutMs, onClientIdle);
    this.attempt(c);
  }

  /** Connects `c` to the next backend, or closes its client when none can take it. */
  private attempt(c: Conn): void {
    const client = c.client;
    if (client.destroyed) return;
    const b = c.attempts <= this.options.retries ? this.choose(Date.now(), c.tried) : undefined;
    if (!b) {
      this.stats.noBackend++;
      this.core?.logger.limited('tcp-proxy-no-backend', 'tcp-proxy: no backend can take a connection; client closed', { plugin: PLUGIN_NAME, tried: c.tried ? [...c.tried].join(',') : 'none' });
      client.destroy();
      return;
    }
    c.attempts++;
    c.address = b.address;
    const target = this.target(b.address);
    if (target instanceof Error) {
      this.core?.logger.limited(`tcp-proxy-target:${b.address}`, 'tcp-proxy: backend has no usable target', { plugin: PLUGIN_NAME, backend: b.address, error: target.message });
      (c.tried ??= new Set()).add(b.address);
      return this.attempt(c);
    }
    this.counts!.add(b.address);
    c.counted = true;
    const upstream = netConnect({ host: target.host, port: target.port, allowHalfOpen: true, noDelay: true });
    (upstream as ConnSocket)[CONN] = c;
    c.upstream = upstream;
    this.sockets.add(upstream);
    // The connect timeout is the socket's own timer; once connected it becomes the idle timeout.
    upstream.setTimeout(this.options.connectTimeoutMs, onUpstreamTimeout);
    upstream.on('connect', onUpstreamConnect);
    upstream.on('error', onUpstreamError);
    upstream.on('close', onUpstreamClose);
  }

  /** @internal */
  uncount(c: Conn): void {
    if (c.counted) this.counts!.remove(c.address);
    c.counted = false;
  }

  /** @internal A connect to `c.address` failed (error or timeout): count it, try another backend. */
  connectError(c: Conn, upstream: Socket, error: Error): void {
    this.uncount(c);
    this.connectFailed(c.address, error.message);
    if (!upstream.destroyed) upstream.destroy();
    (c.tried ??= new Set()).add(c.address);
    c.upstream = undefined;
    this.attempt(c);
  }

  /** @internal */
  connectOk(address: string): void {
    const o = this.outliers.get(address);
    if (o) o.failures = 0;
  }

  /** @internal */
  connectFailed(address: string, error: string, now = Date.now()): void {
    this.stats.connectFailures++;
    const o = this.outliers.get(address) ?? { failures: 0, ejectedUntil: 0, times: 0, decayedTo: 0 };
    this.outliers.set(address, o);
    o.failures++;
    this.core?.logger.limited(`tcp-proxy-connect:${address}`, 'tcp-proxy: connect to backend failed', { plugin: PLUGIN_NAME, backend: address, error, failures: o.failures });
    const c = this.options.outlier;
    if (o.failures < c.consecutiveFailures || o.ejectedUntil > now || c.maxEjectedPercent === 0) return;
    const total = this.view.length;
    const ejectedNow = this.view.filter((b) => this.ejected(b.address, now)).length;
    const allowed = Math.max(1, Math.floor((total * c.maxEjectedPercent) / 100));
    if (ejectedNow >= allowed) return;
    // Decay: one off the multiplier for each whole baseEjectionMs spent not ejected since the last one ended.
    const from = Math.max(o.ejectedUntil, o.decayedTo);
    const steps = Math.floor((now - from) / c.baseEjectionMs);
    if (o.times > 0 && steps > 0) {
      o.times = Math.max(0, o.times - steps);
      o.decayedTo = from + steps * c.baseEjectionMs;
    }
    o.times++;
    const ms = Math.min(c.maxEjectionMs, c.baseEjectionMs * o.times);
    o.ejectedUntil = now + ms;
    o.failures = 0;
    this.cached = undefined;
    this.stats.ejections++;
    this.core?.logger.warn('tcp-proxy: backend ejected (failed connects)', { plugin: PLUGIN_NAME, backend: address, forMs: ms, times: o.times });
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'proxy',
  roles: ['loadbalancer'],
  schema,
  setup: (options) => new TcpProxy(options),
});

const CONN = Symbol('tcp-proxy connection');
type ConnSocket = Socket & { [CONN]: Conn };

/** One proxied connection: its client, its current upstream and its bookkeeping. */
class Conn {
  upstream: Socket | undefined;
  /** The backend of the current attempt. */
  address = '';
  connected = false;
  counted = false;
  attempts = 0;
  /** Backends already tried (only after a failed connect). */
  tried: Set<string> | undefined;
  constructor(
    readonly proxy: TcpProxy,
    readonly client: Socket,
  ) {}
}

function noop(): void {}

function onClientIdle(this: Socket): void {
  (this as ConnSocket)[CONN].proxy.stats.idleClosed++;
  this.destroy();
}

function onClientClose(this: Socket): void {
  const c = (this as ConnSocket)[CONN];
  c.proxy.stats.active--;
  c.proxy.sockets.delete(this);
  const u = c.upstream;
  // Not connected yet: give up the connect. Closed before its data ended: take the backend
  // side down too. Ended normally: the backend side finishes its own writes.
  if (u && !u.destroyed && (!c.connected || !this.readableEnded)) u.destroy();
}

function onUpstreamConnect(this: Socket): void {
  const c = (this as ConnSocket)[CONN];
  c.connected = true;
  c.proxy.connectOk(c.address);
  // Both ways with backpressure (Readable.pipe pauses the source while the destination's
  // buffer is full) and half-close (the end of one side ends the other's writing). pipe()
  // rather than stream.pipeline: pipeline costs an AbortController and its DOMException
  // per direction, a quarter of the proxy's CPU per connection (bench/tcp-proxy.ts).
  c.client.pipe(this);
  this.pipe(c.client);
  // A backend left open after its client went away is closed once idle too.
  this.setTimeout(c.proxy.options.idleTimeoutMs);
}

function onUpstreamTimeout(this: Socket): void {
  const c = (this as ConnSocket)[CONN];
  if (c.upstream === this && !c.connected) this.destroy(new Error(`connect timeout after ${c.proxy.options.connectTimeoutMs} ms`));
  else this.destroy();
}

function onUpstreamError(this: Socket, e: Error): void {
  const c = (this as ConnSocket)[CONN];
  // After the connect, 'close' handles it; an upstream already given up on is done.
  if (c.upstream !== this || c.connected) return;
  c.proxy.connectError(c, this, e);
}

function onUpstreamClose(this: Socket): void {
  const c = (this as ConnSocket)[CONN];
  c.proxy.sockets.delete(this);
  if (c.upstream !== this) return; // a failed attempt, already accounted for
  c.proxy.uncount(c);
  // A backend that fails, or closes before its data ended, takes its client down (this one only).
  if (c.connected && !this.readableEnded && !c.client.destroyed) {
    c.proxy.stats.backendErrors++;
    c.client.destroy();
  }
}
