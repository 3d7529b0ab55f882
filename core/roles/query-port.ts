/**
 * The load balancer's query port: a QUIC listener whose sessions (role `query`) ask STATUS (every
 * backend's state) and PICK (one backend, through the `pick` hook). `qhcp status`, `qhcp pick` and
 * core/client/query.ts speak to it.
 */
import { ProtocolError } from '../errors.ts';
import type { Message, ServerStatus } from '../protocol/messages.ts';
import { Session } from '../protocol/session.ts';
import { Listener, type Channel } from '../transport/quic.ts';
import type { QhcpConfig } from '../config/config.ts';
import type { Core } from './core.ts';
import { QueryLimiter } from './query-limit.ts';

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
}

export class QueryPort {
  private listener: Listener | undefined;
  private readonly sessions = new Set<Session>();
  private stopping = false;
  /** STATUS/PICK rate limits (query-limit.ts): a query flood must not starve the health checks. */
  readonly limiter: QueryLimiter;
  private accepted = 0;

  constructor(
    private readonly core: Core,
    private readonly host: QueryHost,
    readonly stats: QueryStats,
  ) {
    this.limiter = new QueryLimiter({ perConnection: core.config.queryRate, total: core.config.queryRateTotal });
  }

  /** Query connections open now and accepted so far; queries delayed by the rate limits (/metrics). */
  connections(): { open: number; accepted: number; limited: number } {
    return { open: this.sessions.size, accepted: this.accepted, limited: this.limiter.stats.delayed };
  }

  get port(): number {
    return this.listener?.port ?? 0;
  }

  async listen(c: Readonly<QhcpConfig>, tls: { cert: string; key: string }): Promise<void> {
    this.listener = await Listener.listen(
      this.core.listenerOptions({
        host: c.loadbalancerHost,
        port: c.loadbalancerPort,
        tls,
        logKey: 'query-refused',
        maxFrameBytes: Math.max(c.maxFrameBytes, 4 * 1024 * 1024),
        onChannel: (ch) => this.accept(ch),
        onExtraStream: (ch) => {
          for (const s of this.sessions) if (s.channel === ch) s.fail(new ProtocolError('EXTRA_STREAM', 'only one control stream is allowed per connection'));
        },
      }),
    );
  }

  private accept(ch: Channel): void {
    const core = this.core;
    if (core.refuse(ch, this.sessions, this.stopping, 'query-refused')) return;
    this.accepted++;
    const session = new Session(ch, {
      role: 'server',
      helloTimeoutMs: core.config.helloTimeout * 1000,
      observe: core.frameObserver(),
      onMessage: (m, s) => this.onQuery(m, s),
      onViolation: (err, s) => core.logger.limited('query-violation', 'protocol violation on query port', { remote: s.remote, code: err.kind, reason: err.message }),
      onClose: (_why, s) => {
        this.sessions.delete(s);
        this.limiter.forget(s);
      },
    });
    this.sessions.add(session);
  }

  private onQuery(msg: Message, s: Session, admitted = false): void {
    if (s.state === 'DRAINING') return;
    if (!admitted && (msg.type === 'STATUS' || msg.type === 'PICK')) {
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
      case 'HELLO': {
        const version = this.core.helloVersion(s, msg.body, 'query');
        if (version === undefined) return;
        s.peer = { node: msg.body.node, role: 'query' };
        if (msg.body.maxFrameBytes !== undefined) s.peerMaxFrameBytes = msg.body.maxFrameBytes;
        s.send('ACK', { version, node: this.core.node, role: 'loadbalancer', metrics: [], maxFrameBytes: Math.max(this.core.config.maxFrameBytes, 4 * 1024 * 1024) });
        return;
      }
      case 'STATUS':
        this.stats.queries++;
        s.send('STATUS_RESPONSE', { seq: msg.body.seq, node: this.core.node, servers: this.host.status(msg.body.service) });
        return;
      case 'PICK': {
        this.stats.queries++;
        const a = this.host.pickAnswer(msg.body.key, msg.body.service);
        s.send('PICK_RESPONSE', a.server !== null ? { seq: msg.body.seq, server: a.server, balancer: a.balancer, why: a.why } : { seq: msg.body.seq, server: null, reason: a.reason });
        return;
      }
      case 'TERMINATE':
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

  /** Refuses new query connections from now on (shutdown begins). */
  halt(): void {
    this.stopping = true;
  }

  /** Closes every query session and the listener. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.limiter.stop();
    for (const s of this.sessions) s.close('shutting down');
    await this.listener?.stop(301, 'shutting down');
  }
}
