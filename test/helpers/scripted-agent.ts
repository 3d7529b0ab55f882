/**
 * A scripted QHCP agent for load balancer tests: a real QUIC listener on loopback speaking the
 * protocol through the real Session and DFA, whose verdict, admin state, weight and services the
 * test sets. Every change is pushed at once as a HEALTH_REPORT to every connected load balancer,
 * as the real agent does (docs/protocol.md); HEALTH_REQUESTs get the current values.
 */
import { Listener, type Channel } from '../../core/transport/quic.ts';
import { Session } from '../../core/protocol/session.ts';
import { selfSigned } from '../../core/transport/tls.ts';
import type { AgentHealth, Message } from '../../core/protocol/messages.ts';

export class ScriptedAgent {
  private readonly sessions = new Set<Session>();
  health: AgentHealth = { verdict: 'SERVING', admin: 'READY', weight: 100 };
  /** HEALTH_REQUESTs answered so far. */
  answered = 0;
  /** TERMINATEs received so far. */
  terminated = 0;
  /** Every message received, in order, by type (to check orderings). */
  readonly log: string[] = [];
  /** Delay before answering a HEALTH_REQUEST (ms). */
  answerDelayMs = 0;
  /** Delay before answering a HELLO (ms): a slow connection set-up. */
  helloDelayMs = 0;
  /**
   * Push mode: accept CONFIG_UPDATE's report interval (declined by default) and send a
   * HEALTH_REPORT every interval plus `reportSlowByMs`, so each report comes that much after the
   * load balancer expects it.
   */
  pushReports = false;
  reportSlowByMs = 0;
  /** HEALTH_REPORTs sent by the push timers. */
  reported = 0;
  private readonly reportTimers = new Set<NodeJS.Timeout>();
  /** Called with the request count when a HEALTH_REQUEST arrives (before it is answered). */
  onRequest: ((n: number) => void) | undefined;

  private constructor(private readonly listener: Listener) {}

  static async start(host = '127.0.0.1'): Promise<ScriptedAgent> {
    const tls = await selfSigned();
    let agent: ScriptedAgent | undefined;
    const listener = await Listener.listen({ host, port: 0, cert: tls.cert, key: tls.key, idleTimeoutMs: 30_000, handshakeTimeoutMs: 5000, onChannel: (ch) => agent!.accept(ch) });
    agent = new ScriptedAgent(listener);
    return agent;
  }

  get port(): number {
    return this.listener.port;
  }
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }
  get connections(): number {
    return [...this.sessions].filter((s) => s.state !== 'AWAIT_HELLO' && !s.isClosed).length;
  }

  /** Changes what the agent reports and pushes a HEALTH_REPORT to every load balancer at once. */
  set(health: Partial<AgentHealth>): void {
    this.health = { ...this.health, ...health };
    for (const k of Object.keys(this.health) as Array<keyof AgentHealth>) if (this.health[k] === undefined) delete this.health[k];
    for (const s of this.sessions) s.trySend('HEALTH_REPORT', { metrics: {}, ageMs: 0, ...this.health });
  }

  private accept(ch: Channel): void {
    const session = new Session(ch, {
      role: 'server',
      helloTimeoutMs: 5000,
      onMessage: (m, s) => this.onMessage(m, s),
      onClose: (_w, s) => this.sessions.delete(s),
    });
    this.sessions.add(session);
  }

  private onMessage(msg: Message, s: Session): void {
    this.log.push(msg.type);
    switch (msg.type) {
      case 'HELLO': {
        const ack = () => s.trySend('ACK', { version: 1, node: 'scripted-agent', role: 'agent', metrics: [] });
        if (this.helloDelayMs > 0) setTimeout(ack, this.helloDelayMs);
        else ack();
        return;
      }
      case 'HEALTH_REQUEST': {
        this.onRequest?.(this.answered + 1);
        const answer = () => {
          this.answered++;
          this.log.push('sent HEALTH_RESPONSE');
          s.trySend('HEALTH_RESPONSE', { seq: msg.body.seq, metrics: {}, ageMs: 0, ...this.health });
        };
        if (this.answerDelayMs > 0) setTimeout(answer, this.answerDelayMs);
        else answer();
        return;
      }
      case 'CONFIG_UPDATE': {
        const ms = this.pushReports ? (msg.body.reportIntervalMs ?? 0) : 0;
        s.send('CONFIG_ACK', { seq: msg.body.seq, metrics: [], reportIntervalMs: ms });
        if (ms > 0) {
          const report = (): void => {
            if (s.isClosed) return;
            this.reported++;
            s.trySend('HEALTH_REPORT', { metrics: {}, ageMs: 0, ...this.health });
            const t = setTimeout(() => {
              this.reportTimers.delete(t);
              report();
            }, ms + this.reportSlowByMs);
            this.reportTimers.add(t);
          };
          report();
        }
        return;
      }
      case 'TERMINATE':
        this.terminated++;
        s.send('TERMINATE_ACK', {});
        return;
      default:
        return;
    }
  }

  async stop(): Promise<void> {
    for (const t of this.reportTimers) clearTimeout(t);
    for (const s of this.sessions) s.close('stopping');
    await this.listener.stop(0, 'stopping');
  }
}
