/**
 * A hostile agent for tests: a real QUIC listener on loopback speaking QHCP frames with no DFA
 * and no validation of what it sends, so it can answer a real load balancer with anything the
 * codec lets through: out-of-range metrics, escape sequences in reasons, ERRORs at will.
 */
import { Listener, type Channel } from '../../core/transport/quic.ts';
import { selfSigned } from '../../core/transport/tls.ts';
import type { Message, Metrics } from '../../core/protocol/messages.ts';

export interface HostileScript {
  /** Node name in ACK (default "hostile"). */
  node?: string;
  /** The metrics answered to every HEALTH_REQUEST, or a function of the request count. */
  metrics?: Metrics | ((n: number) => Metrics);
  /** The verdict's `reason` in every HEALTH_RESPONSE. */
  reason?: string;
  /** Answer the n-th HEALTH_REQUEST (1-based) with this ERROR instead (then the connection closes). */
  errorAt?: (n: number) => { code: number; reason: string } | undefined;
}

export class HostileAgent {
  readonly channels = new Set<Channel>();
  /** ERROR frames the load balancer sent us (code and reason). */
  readonly errorsReceived: Array<{ code: number; reason: string }> = [];
  requests = 0;

  private constructor(
    private readonly listener: Listener,
    private readonly script: HostileScript,
  ) {}

  get port(): number {
    return this.listener.port;
  }
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  static async start(script: HostileScript = {}): Promise<HostileAgent> {
    const tls = await selfSigned();
    let self: HostileAgent | undefined;
    const listener = await Listener.listen({
      host: '127.0.0.1',
      port: 0,
      cert: tls.cert,
      key: tls.key,
      idleTimeoutMs: 30_000,
      onChannel: (ch) => self!.accept(ch),
    });
    self = new HostileAgent(listener, script);
    return self;
  }

  private accept(ch: Channel): void {
    this.channels.add(ch);
    ch.setHandler({
      message: (m) => this.onMessage(m, ch),
      protocolError: () => {},
      ended: () => {},
      closed: () => this.channels.delete(ch),
    });
  }

  private onMessage(m: Message, ch: Channel): void {
    const s = this.script;
    if (m.type === 'HELLO') {
      void ch.send({ type: 'ACK', body: { version: 1, node: s.node ?? 'hostile', role: 'agent', metrics: [] } });
    } else if (m.type === 'HEALTH_REQUEST') {
      const n = ++this.requests;
      const err = s.errorAt?.(n);
      if (err) {
        void ch.send({ type: 'ERROR', body: err }).then(() => setTimeout(() => void ch.close(err.code, 'hostile'), 50));
        return;
      }
      const metrics = typeof s.metrics === 'function' ? s.metrics(n) : (s.metrics ?? { loadScore: 0.5 });
      void ch.send({ type: 'HEALTH_RESPONSE', body: { seq: m.body.seq, metrics, ageMs: 0, verdict: 'SERVING', admin: 'READY', weight: 100, ...(s.reason !== undefined ? { reason: s.reason } : {}) } });
    } else if (m.type === 'CONFIG_UPDATE') {
      void ch.send({ type: 'CONFIG_ACK', body: { seq: m.body.seq, metrics: [], reportIntervalMs: 0 } });
    } else if (m.type === 'TERMINATE') {
      void ch.send({ type: 'TERMINATE_ACK', body: {} });
    } else if (m.type === 'ERROR') {
      this.errorsReceived.push(m.body);
    }
  }

  /** Sends DRAIN with `reason` on every open connection. */
  drain(reason: string, graceMs = 200): void {
    for (const ch of this.channels) void ch.send({ type: 'DRAIN', body: { reason, graceMs } });
  }

  async stop(): Promise<void> {
    await this.listener.stop(301, 'hostile agent done');
  }
}
