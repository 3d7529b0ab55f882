/**
 * The core object both roles build on: hooks, logger, frozen config, applied plugins.
 * Plugins receive it in `apply(core)`.
 */
import { hostname } from 'node:os';
import { dirname, resolve } from 'node:path';
import { every, type Tick } from '../util/tick.ts';
import { createHooks, guardHooks, type CoreLike, type SessionInfo } from '../plugin/hooks.ts';
import { applyPlugins, resolvePlugins, type QhcpPlugin, type RoleName } from '../plugin/loader.ts';
import { createLogger, type Logger } from '../util/log.ts';
import type { QhcpConfig } from '../config/config.ts';
import { preHello, type Session } from '../protocol/session.ts';
import { ProtocolError } from '../errors.ts';
import { SUPPORTED_VERSIONS, type Bodies } from '../protocol/messages.ts';
import type { Channel, ListenOptions } from '../transport/quic.ts';
import type { PluginError } from '../errors.ts';

export class Core implements CoreLike {
  readonly hooks = createHooks();
  /** Failures per plugin name (thrown or timed out taps). */
  readonly pluginFailures = new Map<string, number>();
  /** The most recent contained plugin failure (a pick or check reports it as its reason). */
  lastPluginError: PluginError | undefined;
  plugins: QhcpPlugin[] = [];
  readonly node: string;
  readonly configDir: string;

  constructor(
    readonly role: RoleName,
    readonly config: Readonly<QhcpConfig>,
    readonly logger: Logger = createLogger(),
    readonly configFile?: string,
  ) {
    this.node = config.node ?? `${hostname()}:${role === 'server' ? config.serverPort : config.loadbalancerPort}`;
    this.configDir = configFile ? dirname(configFile) : process.cwd();
    guardHooks(this.hooks, this.logger, config.pluginTimeout * 1000, this.pluginFailures, (err) => (this.lastPluginError = err));
  }

  /**
   * Resolves the config's plugins (plus role defaults) and applies them, unless `plugins`
   * are given directly (tests, embedding).
   */
  async loadPlugins(plugins?: QhcpPlugin[]): Promise<void> {
    this.plugins = plugins ?? (await resolvePlugins(this.config, this.role, this.configFile));
    await applyPlugins(this.plugins, this, this.config.pluginTimeout * 1000);
    this.logger.debug('plugins applied', { plugins: this.plugins.map((p) => p.name).join(',') });
  }

  /**
   * Admission for a connection on one of our listeners: refused (closed with 301 or 300 and
   * logged, rate-limited) while stopping, at the connection cap, or at the cap on connections
   * still without HELLO. Returns whether it was refused.
   */
  refuse(ch: Channel, sessions: ReadonlySet<Session>, stopping: boolean, logKey: string): boolean {
    const why = stopping
      ? 'shutting down'
      : sessions.size >= this.config.maxConnections
        ? 'too many connections'
        : preHello(sessions) >= this.config.maxPendingHandshakes
          ? 'too many connections without HELLO'
          : fromSource(sessions, sourceOf(ch.remote)) >= this.config.maxConnectionsPerSource
            ? `too many connections from ${sourceOf(ch.remote)}`
            : undefined;
    if (!why) return false;
    this.logger.limited(logKey, 'connection refused', { remote: ch.remote, reason: why });
    void ch.close(stopping ? 301 : 300, why);
    return true;
  }

  /**
   * The version to speak with a HELLO's sender, after checking it offers one we speak and the
   * session kind this listener serves; otherwise the session is failed and undefined returned.
   */
  helloVersion(s: Session, body: Bodies['HELLO'], serves: Bodies['HELLO']['role']): number | undefined {
    const version = Math.max(...body.versions.filter((v) => SUPPORTED_VERSIONS.includes(v)));
    if (!Number.isFinite(version)) {
      s.fail(new ProtocolError('UNSUPPORTED_VERSION', `none of versions ${body.versions.join(',')} is supported (supported: ${SUPPORTED_VERSIONS.join(',')})`));
      return undefined;
    }
    if (body.role !== serves) {
      const here = serves === 'checker' ? 'an agent: only role "checker"' : 'a load balancer: only role "query"';
      s.fail(new ProtocolError('UNSUPPORTED_REQUEST', `this is ${here} is served here`));
      return undefined;
    }
    return version;
  }

  /**
   * The idle limit after HELLO: every second (or sooner for short limits), a session past HELLO
   * from which nothing has been received for `sessionIdleTimeout` is closed with ERROR 303
   * SESSION_IDLE, unless `busy` says it is served otherwise (an agent pushing reports to it).
   * QUIC keep-alive PINGs do not count: they keep a connection, not a session, alive.
   */
  sweepIdle<D extends object>(sessions: ReadonlySet<Session<D>>, busy: (s: Session<D>) => boolean = () => false): Tick {
    const idleMs = this.config.sessionIdleTimeout * 1000;
    // On the process's shared tick of its period (core/util/tick.ts): at the default 1 s it runs in
    // the same wake as the agent's sample instead of waking the process once more.
    return every(Math.max(50, Math.min(1000, idleMs / 4)), () => {
      const now = Date.now();
      for (const s of sessions) {
        if (s.isClosed || s.state === 'AWAIT_HELLO' || s.state === 'AUTH' || now - s.lastReceivedAt < idleMs || busy(s)) continue;
        this.logger.limited('idle', 'idle session closed', { remote: s.remote, idleMs: now - s.lastReceivedAt });
        s.fail(new ProtocolError('SESSION_IDLE', `nothing asked for ${Math.round((now - s.lastReceivedAt) / 1000)} s (sessionIdleTimeout ${this.config.sessionIdleTimeout} s)`));
      }
    });
  }

  /**
   * A session lives no longer than its credentials: at `expiresAt` (the verdict of the `verify`
   * hook) it is closed with ERROR 202 AUTH_EXPIRED. A load balancer reconnects with a fresh
   * token before then (core/health/checker.ts).
   */
  expireWith<D extends object>(s: Session<D>, expiresAt: number | undefined): void {
    if (expiresAt === undefined) return;
    const t = setTimeout(() => {
      this.logger.limited('auth-expired', 'session credentials expired', { remote: s.remote });
      s.fail(new ProtocolError('AUTH_EXPIRED', 'credentials expired (token or client certificate): the session ends with them (reconnect with fresh ones)'));
    }, Math.max(0, Math.min(expiresAt - Date.now(), 2 ** 31 - 1)));
    t.unref();
    void s.closed().then(() => clearTimeout(t));
  }

  /**
   * The one listener-options builder: a role's listen address and certificate plus what every
   * listener takes from the config (frame limit, idle and handshake timeouts, stream and
   * handshake caps); refused handshakes are logged rate-limited under `logKey`.
   */
  listenerOptions(o: {
    host: string;
    port: number;
    tls: { cert: string; key: string };
    logKey: string;
    maxFrameBytes?: number;
    onRefused?: (remote: string) => void;
    onChannel: ListenOptions['onChannel'];
    onExtraStream?: ListenOptions['onExtraStream'];
  }): ListenOptions {
    const c = this.config;
    return {
      host: o.host,
      port: o.port,
      cert: o.tls.cert,
      key: o.tls.key,
      maxFrameBytes: o.maxFrameBytes ?? c.maxFrameBytes,
      idleTimeoutMs: c.idleTimeout * 1000,
      handshakeTimeoutMs: c.helloTimeout * 1000,
      maxStreams: c.maxStreams,
      maxPendingHandshakes: c.maxPendingHandshakes,
      onHandshakeRefused: (remote) => {
        o.onRefused?.(remote);
        this.logger.limited(o.logKey, 'handshake refused', { remote, reason: 'too many handshakes in progress' });
      },
      onChannel: o.onChannel,
      ...(o.onExtraStream ? { onExtraStream: o.onExtraStream } : {}),
    };
  }

  /** Every plugin in use, per family, as start-up line fields: `plugins.alert=webhook,log`. */
  pluginFields(): Record<string, string> {
    const byFamily: Record<string, string[]> = {};
    for (const p of this.plugins) (byFamily[p.family ?? 'other'] ??= []).push(p.name);
    return Object.fromEntries(Object.entries(byFamily).map(([f, names]) => [`plugins.${f}`, names.join(',')]));
  }

  resolvePath(path: string): string {
    return resolve(this.configDir, path);
  }

  sessionInfo(s: Session): SessionInfo {
    return { id: s.id, remote: s.remote, role: s.dfa.role };
  }

  /** A `frame` observer for sessions, or undefined when no plugin listens (hot path). */
  frameObserver(): ((dir: 'in' | 'out', msg: import('../protocol/messages.ts').Message, s: Session) => void) | undefined {
    // Not isUsed(): the guard's interceptor makes every hook "used".
    if (this.hooks.frame.taps.length === 0) return undefined;
    return (dir, msg, s) => this.hooks.frame.call(dir, msg, this.sessionInfo(s));
  }
}

/** The IP address of a "host:port" or "[v6]:port" remote. */
export function sourceOf(remote: string): string {
  const at = remote.lastIndexOf(':');
  const host = at > 0 ? remote.slice(0, at) : remote;
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
}

function fromSource(sessions: Iterable<Session>, source: string): number {
  let n = 0;
  for (const s of sessions) if (sourceOf(s.remote) === source) n++;
  return n;
}
