/**
 * The load balancer's query port: a QUIC listener whose sessions (role `query`) ask STATUS (every
 * backend's state), PICK (one backend, through the `pick` hook) or WATCH (the view, then every
 * change: watch-hub.ts). `qhcp status`, `qhcp pick`, `qhcp watch` and core/client/ speak to it.
 */
import { isIP } from 'node:net';
import { ProtocolError } from '../errors.ts';
import { FIELD_LIMITS, type Message, type ServerStatus } from '../protocol/messages.ts';
import { DEFAULT_MAX_FRAME_BYTES } from '../protocol/codec.ts';
import { Session } from '../protocol/session.ts';
import { Listener, type Channel } from '../transport/quic.ts';
import type { DriverStats } from '../transport/driver.ts';
import type { Tick } from '../util/tick.ts';
import { toVerdict } from '../plugin/hooks.ts';
import type { QhcpConfig } from '../config/config.ts';
import type { Core } from './core.ts';
import { QueryLimiter } from './query-limit.ts';
import { WatchHub } from './watch-hub.ts';
import type { SyncDispatcher } from '../plugin/sync.ts';

/** Whether `host` is a loopback address (the query port's default, 127.0.0.1). */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
}

/** Bytes a STATUS_RESPONSE page leaves for its envelope (seq, node, next, total) below the frame limit. */
const PAGE_ENVELOPE_BYTES = 512;

/**
 * The servers from `offset` that fit one STATUS_RESPONSE page of at most `budget` payload bytes
 * (and `limit` entries). An entry too large to fit a page alone is sent with its metrics left
 * out rather than never. Returns the page and the offset of the next one (undefined: last page).
 */
export function statusPage(all: readonly ServerStatus[], offset: number, limit: number, budget: number): { servers: ServerStatus[]; next?: number } {
  const servers: ServerStatus[] = [];
  let used = PAGE_ENVELOPE_BYTES;
  let i = offset;
  for (; i < all.length && servers.length < limit; i++) {
    let entry = all[i]!;
    let bytes = Buffer.byteLength(JSON.stringify(entry)) + 1;
    if (servers.length === 0 && used + bytes > budget) {
      entry = { ...entry, metrics: {} };
      bytes = Buffer.byteLength(JSON.stringify(entry)) + 1;
    }
    if (used + bytes > budget && servers.length > 0) break;
    servers.push(entry);
    used += bytes;
  }
  return i < all.length ? { servers, next: i } : { servers };
}

export interface QueryStats {
  picks: number;
  queries: number;
}

/** A pick's outcome: a server, or why there is none; with the balancer that chose and why. */
export type PickAnswer = { server: string; balancer: string; why: string } | { server: null; reason: string };

/** What the query port asks the load balancer. */
export interface QueryHost {
  status(service?: string): ServerStatus[];
  pickAnswer(key?: string, service?: string): PickAnswer;
  /** The view and its changes per tick, for WATCH (started on first use). */
  feed(): SyncDispatcher;
}

export class QueryPort {
  private listener: Listener | undefined;
  private readonly sessions = new Set<Session<{ maxFrameBytes?: number }>>();
  private stopping = false;
  private idleSweep: Tick | undefined;
  /** Whether an auth plugin verifies query clients (the `verify` hook has a tap). */
  private authOpen = true;
  /** STATUS/PICK rate limits (query-limit.ts): a query flood must not starve the health checks. */
  readonly limiter: QueryLimiter;
  private accepted = 0;
  /** WATCH sessions and what they are sent. */
  readonly watchers: WatchHub;

  constructor(
    private readonly core: Core,
    private readonly host: QueryHost,
    readonly stats: QueryStats,
  ) {
    this.limiter = new QueryLimiter({ perConnection: core.config.queryRate, total: core.config.queryRateTotal });
    this.watchers = new WatchHub(() => host.feed(), (s) => this.frameBudget(s), { maxQueue: core.config.watchQueue, maxQueueBytes: core.config.maxUnreadBytes * 4 });
  }

  /** The largest frame to send on `s`: what it accepts (HELLO maxFrameBytes, else the default) and what we allow. */
  private frameBudget(s: Session): number {
    return Math.min(s.peerMaxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES, this.core.config.maxFrameBytes);
  }

  /** The QUIC driver's counters of the query port's socket (none before it listens). */
  get transportStats(): Readonly<DriverStats> | undefined {
    return this.listener?.stats;
  }

  /** Query connections open now and accepted so far; queries delayed by the rate limits (/metrics); WATCH sessions. */
  connections(): { open: number; accepted: number; limited: number; watching: number; resyncs: number } {
    return { open: this.sessions.size, accepted: this.accepted, limited: this.limiter.stats.delayed, watching: this.watchers.size, resyncs: this.watchers.stats.resyncs };
  }

  get port(): number {
    return this.listener?.port ?? 0;
  }

  async listen(c: Readonly<QhcpConfig>, tls: { cert: string; key: string }): Promise<void> {
    this.listener = await Listener.listen({
      ...this.core.listenerOptions({
        host: c.loadbalancerHost,
        port: c.loadbalancerPort,
        tls,
        logKey: 'query-refused',
        // Query clients send small frames only; STATUS answers of any size go out in pages.
        maxFrameBytes: c.maxFrameBytes,
        onChannel: (ch) => this.accept(ch),
        onExtraStream: (ch) => {
          for (const s of this.sessions) if (s.channel === ch) s.fail(new ProtocolError('EXTRA_STREAM', 'only one control stream is allowed per connection'));
        },
      }),
      // `qhcp status` on this host: no Retry round trip (see driver.ts ServerSide for why it is safe).
      loopbackWithoutRetry: true,
    });
    // A WATCH session asks once and then only listens: it is not idle (QUIC's idle timeout still ends a dead one).
    this.idleSweep = this.core.sweepIdle(this.sessions, (s) => s.state === 'WATCHING');
    // Not isUsed(): the guard's interceptor makes every hook "used".
    this.authOpen = this.core.hooks.verify.taps.length === 0;
    if (this.authOpen && !isLoopback(c.loadbalancerHost)) {
      this.core.logger.warn('QUERY PORT IS OPEN: it listens beyond loopback and no auth plugin verifies query clients; anyone who reaches it reads every backend (set loadbalancerHost to 127.0.0.1, or jwt with verifyQueries: true)', { address: `${c.loadbalancerHost}:${this.port}` });
    }
  }

  private accept(ch: Channel): void {
    const core = this.core;
    if (core.refuse(ch, this.sessions, this.stopping, 'query-refused')) return;
    this.accepted++;
    const session = new Session(ch, {
      role: 'server',
      helloTimeoutMs: core.config.helloTimeout * 1000,
      observe: core.frameObserver(),
      unread: { perConnection: core.config.maxUnreadBytes, total: core.config.maxUnreadBytesTotal },
      stallMs: core.config.slowConsumerTimeout * 1000,
      onMessage: (m, s) => this.onQuery(m, s),
      onViolation: (err, s) => core.logger.limited('query-violation', 'protocol violation on query port', { remote: s.remote, code: err.kind, reason: err.message }),
      onClose: (_why, s) => {
        this.sessions.delete(s);
        this.limiter.forget(s);
        this.watchers.forget(s);
      },
    });
    this.sessions.add(session);
  }

  private onQuery(msg: Message, s: Session<{ maxFrameBytes?: number }>, admitted = false): void {
    if (s.state === 'DRAINING') return;
    if (!admitted && !this.limiter.unlimited && (msg.type === 'STATUS' || msg.type === 'PICK' || msg.type === 'WATCH')) {
      const later = () => {
        if (!s.isClosed) this.onQuery(msg, s, true);
      };
      if (!this.limiter.submit(s, later)) {
        const l = this.limiter.limits;
        this.core.logger.limited('query-rate', 'query connection closed: too many queries waiting', { remote: s.remote, perConnection: l.perConnection, total: l.total });
        s.fail(new ProtocolError('TOO_MANY_CONNECTIONS', `query rate limit: more than ${this.limiter.maxWaiting} queries waiting (${l.perConnection}/s per connection, ${l.total}/s in all)`));
      }
      return;
    }
    switch (msg.type) {
      case 'HELLO':
        void this.hello(msg.body, s);
        return;
      case 'STATUS': {
        this.stats.queries++;
        // Paged to fit the frame size the client accepts (HELLO maxFrameBytes, else the default).
        const all = this.host.status(msg.body.service);
        const offset = Math.min(msg.body.offset ?? 0, all.length);
        const budget = this.frameBudget(s);
        const page = statusPage(all, offset, Math.min(msg.body.limit ?? FIELD_LIMITS.maxServers, FIELD_LIMITS.maxServers), budget);
        const paged = page.next !== undefined || offset > 0;
        s.send('STATUS_RESPONSE', { seq: msg.body.seq, node: this.core.node, servers: page.servers, ...(page.next !== undefined ? { next: page.next } : {}), ...(paged ? { total: all.length } : {}) });
        return;
      }
      case 'PICK': {
        this.stats.queries++;
        const a = this.host.pickAnswer(msg.body.key, msg.body.service);
        s.send('PICK_RESPONSE', a.server !== null ? { seq: msg.body.seq, server: a.server, balancer: a.balancer, why: a.why } : { seq: msg.body.seq, server: null, reason: a.reason });
        return;
      }
      case 'WATCH':
        this.stats.queries++;
        this.watchers.subscribe(s, msg.body);
        return;
      case 'TERMINATE':
        this.watchers.forget(s);
        s.send('TERMINATE_ACK', {});
        setTimeout(() => s.close('terminated'), 1000).unref();
        return;
      case 'HEALTH_REQUEST':
      case 'CONFIG_UPDATE':
        return s.fail(new ProtocolError('UNSUPPORTED_REQUEST', `${msg.type} is served by an agent, not by a load balancer`));
      default:
        return;
    }
  }

  /** HELLO on the query port: version and role, then the `verify` hook when an auth plugin is configured. */
  private async hello(body: Extract<Message, { type: 'HELLO' }>['body'], s: Session<{ maxFrameBytes?: number }>): Promise<void> {
    const core = this.core;
    const version = core.helloVersion(s, body, 'query');
    if (version === undefined) return;
    const verdict = this.authOpen ? undefined : toVerdict(await core.hooks.verify.promise({ token: body.token, node: body.node, remote: s.remote, role: 'query' }));
    if (s.isClosed) return;
    if (verdict && !verdict.ok) {
      core.logger.limited('query-auth', 'query client authentication failed', { remote: s.remote, node: body.node, code: verdict.kind, reason: verdict.reason });
      return s.fail(new ProtocolError(verdict.kind, verdict.reason));
    }
    s.peer = { node: body.node, role: 'query', ...(verdict?.ok && verdict.subject ? { subject: verdict.subject } : {}) };
    if (verdict?.ok) core.expireWith(s, verdict.expiresAt);
    if (body.maxFrameBytes !== undefined) s.peerMaxFrameBytes = body.maxFrameBytes;
    s.send('ACK', { version, node: core.node, role: 'loadbalancer', metrics: [], maxFrameBytes: core.config.maxFrameBytes });
  }

  /** Refuses new query connections from now on (shutdown begins). */
  halt(): void {
    this.stopping = true;
  }

  /** Closes every query session and the listener. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.idleSweep?.stop();
    this.limiter.stop();
    this.watchers.stop();
    for (const s of this.sessions) s.close('shutting down');
    await this.listener?.stop(301, 'shutting down');
  }
}
