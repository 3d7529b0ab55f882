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
 *   `maxEjectionMs`); at most `maxEjectedPercent` of the backends are ejected at once (at least
 *   one). A failed connect is retried on another backend, `retries` times.
 * A backend's service address is its `target` (targets map or portOffset), not the agent's port.
 */
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import type { QhcpPlugin } from '../../core/plugin/loader.ts';
import { ConfigError } from '../../core/errors.ts';
import { TARGET_SCHEMA, checkTargets, intentOf, targetOf, type TargetOptions } from '../sync/common.ts';
import { connectionCounts, type ConnectionCounts } from './connections.ts';

const PLUGIN_NAME = 'tcp-proxy';

export interface TcpProxyOptions extends TargetOptions {
  host: string;
  port: number;
  idleTimeoutMs: number;
  connectTimeoutMs: number;
  retries: number;
  degraded: 'fallback' | 'always' | 'never';
  maxConnections: number;
  stopGraceMs: number;
  outlier: { consecutiveFailures: number; baseEjectionMs: number; maxEjectionMs: number; maxEjectedPercent: number };
}

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
  times: number;
}

export default class TcpProxyPlugin implements QhcpPlugin {
  static schema = {
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
          baseEjectionMs: { type: 'integer', minimum: 1, maximum: 86_400_000, default: 10_000, description: 'first ejection time; each further ejection multiplies it' },
          maxEjectionMs: { type: 'integer', minimum: 1, maximum: 86_400_000, default: 300_000, description: 'an ejection never lasts longer' },
          maxEjectedPercent: { type: 'integer', minimum: 0, maximum: 100, default: 50, description: 'share of backends ejected at once at most (at least one; 0: never eject)' },
        },
      },
    },
  };
  readonly name = PLUGIN_NAME;
  readonly family = 'proxy' as const;
  readonly roles = ['loadbalancer' as const];
  readonly stats: TcpProxyStats = { accepted: 0, active: 0, noBackend: 0, connectFailures: 0, ejections: 0, idleClosed: 0, backendErrors: 0 };
  private view: readonly BackendView[] = [];
  private server: Server | undefined;
  private core: CoreLike | undefined;
  private counts: ConnectionCounts | undefined;
  private readonly outliers = new Map<string, Outlier>();
  private readonly sockets = new Set<Socket>();
  private stopping = false;

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
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => this.accept(s));
    server.maxConnections = this.options.maxConnections;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.options.port, this.options.host, () => {
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

  private choose(exclude: ReadonlySet<string>): BackendView | undefined {
    const now = Date.now();
    const servers = this.candidates(now, exclude);
    if (servers.length === 0) return undefined;
    const chosen = this.core!.hooks.pick.call({ servers, key: undefined, now });
    return chosen && servers.includes(chosen) ? chosen : undefined;
  }

  private track(s: Socket): void {
    this.sockets.add(s);
    s.once('close', () => this.sockets.delete(s));
  }

  private accept(client: Socket): void {
    if (this.stopping) {
      client.destroy();
      return;
    }
    this.stats.accepted++;
    this.stats.active++;
    this.track(client);
    client.on('error', () => {});
    client.once('close', () => this.stats.active--);
    client.setTimeout(this.options.idleTimeoutMs, () => {
      this.stats.idleClosed++;
      client.destroy();
    });
    const tried = new Set<string>();
    const attempt = (): void => {
      if (client.destroyed) return;
      const b = tried.size <= this.options.retries ? this.choose(tried) : undefined;
      if (!b) {
        this.stats.noBackend++;
        this.core?.logger.limited('tcp-proxy-no-backend', 'tcp-proxy: no backend can take a connection; client closed', { plugin: PLUGIN_NAME, tried: [...tried].join(',') || 'none' });
        client.destroy();
        return;
      }
      tried.add(b.address);
      let target: { host: string; port: number };
      try {
        target = targetOf(b.address, this.options);
      } catch (e) {
        this.core?.logger.limited(`tcp-proxy-target:${b.address}`, 'tcp-proxy: backend has no usable target', { plugin: PLUGIN_NAME, backend: b.address, error: (e as Error).message });
        return attempt();
      }
      this.counts!.add(b.address);
      let counted = true;
      const uncount = () => {
        if (counted) this.counts!.remove(b.address);
        counted = false;
      };
      const upstream = netConnect({ host: target.host, port: target.port, allowHalfOpen: true });
      this.track(upstream);
      let connected = false;
      const timer = setTimeout(() => upstream.destroy(new Error(`connect timeout after ${this.options.connectTimeoutMs} ms`)), this.options.connectTimeoutMs);
      upstream.once('connect', () => {
        connected = true;
        clearTimeout(timer);
        this.connectOk(b.address);
        upstream.setNoDelay(true);
        client.setNoDelay(true);
        // Both ways with backpressure (Readable.pipe pauses the source while the destination's
        // buffer is full) and half-close (the end of one side ends the other's writing). pipe()
        // rather than stream.pipeline: pipeline costs an AbortController and its DOMException
        // per direction, a quarter of the proxy's CPU per connection (bench/tcp-proxy.ts).
        client.pipe(upstream);
        upstream.pipe(client);
        // A backend left open after its client went away is closed once idle too.
        upstream.setTimeout(this.options.idleTimeoutMs, () => upstream.destroy());
      });
      // A side that fails, or closes before its data ended, takes the other one down (this
      // client only); a side that ended normally leaves the other to finish its own writes.
      upstream.once('close', () => {
        if (connected && !upstream.readableEnded && !client.destroyed) {
          this.stats.backendErrors++;
          client.destroy();
        }
      });
      client.once('close', () => {
        if (connected && !client.readableEnded && !upstream.destroyed) upstream.destroy();
      });
      upstream.once('close', () => {
        clearTimeout(timer);
        uncount();
        // Closed from the client side, or after a normal end: nothing more to do.
      });
      upstream.on('error', (e) => {
        if (connected) return; // after the connect, 'close' handles it
        clearTimeout(timer);
        uncount();
        this.connectFailed(b.address, e.message);
        if (!upstream.destroyed) upstream.destroy();
        attempt();
      });
      client.once('close', () => {
        if (!connected) upstream.destroy();
      });
    };
    attempt();
  }

  private connectOk(address: string): void {
    const o = this.outliers.get(address);
    if (o) o.failures = 0;
  }

  private connectFailed(address: string, error: string): void {
    this.stats.connectFailures++;
    const now = Date.now();
    const o = this.outliers.get(address) ?? { failures: 0, ejectedUntil: 0, times: 0 };
    this.outliers.set(address, o);
    o.failures++;
    this.core?.logger.limited(`tcp-proxy-connect:${address}`, 'tcp-proxy: connect to backend failed', { plugin: PLUGIN_NAME, backend: address, error, failures: o.failures });
    const c = this.options.outlier;
    if (o.failures < c.consecutiveFailures || o.ejectedUntil > now || c.maxEjectedPercent === 0) return;
    const total = this.view.length;
    const ejectedNow = this.view.filter((b) => this.ejected(b.address, now)).length;
    const allowed = Math.max(1, Math.floor((total * c.maxEjectedPercent) / 100));
    if (ejectedNow >= allowed) return;
    o.times++;
    const ms = Math.min(c.maxEjectionMs, c.baseEjectionMs * o.times);
    o.ejectedUntil = now + ms;
    o.failures = 0;
    this.stats.ejections++;
    this.core?.logger.warn('tcp-proxy: backend ejected (failed connects)', { plugin: PLUGIN_NAME, backend: address, forMs: ms, times: o.times });
  }
}
