/**
 * The load balancer's checker: one QUIC session per backend, a jittered poll loop per backend
 * (HEALTH_REQUEST), or push mode (the agent sends HEALTH_REPORTs; a missing one is a failed
 * check), reconnects, and the cap on handshakes in flight. It turns every answer and failure into
 * health events (core/health/states.ts) for its host, the load balancer, which moves the state.
 * docs/operations.md, "Health semantics", describes the timing.
 */
import { performance } from 'node:perf_hooks';
import { ProtocolError, PeerError, LocalError, errorText } from '../errors.ts';
import { SUPPORTED_VERSIONS, PROTOCOL_VERSION, type Message, type Metrics } from '../protocol/messages.ts';
import { Session, type SessionEnd } from '../protocol/session.ts';
import { connect, ACK_EVERY, type ClientSocket } from '../transport/quic.ts';
import { sanitize } from '../util/sanitize.ts';
import type { QhcpConfig } from '../config/config.ts';
import type { CheckResult, Hooks } from '../plugin/hooks.ts';
import type { Logger } from '../util/log.ts';
import type { Backend } from './backend.ts';
import { ADMIN_STATES, VERDICTS, type AdminState, type HealthEvent, type Verdict } from './states.ts';
import { withTimeout } from '../util/timeout.ts';
import { DeadlineHeap } from '../util/deadlines.ts';

/**
 * Connection attempts in flight at most. A QUIC handshake costs milliseconds of CPU on each
 * side; 1000 started at once all missed their timeout and retried together (bench/, N = 1000,
 * before a new connection had its own budget, connectTimeoutOf). With that budget the cap only
 * paces start-up: 1000 backends at 1 s, quiet 2-core machine, the last UP transition after
 * 3.5-3.95 s at 16 in flight, 3.1-3.35 s at 48, 2.6-3.0 s at 96 (from LoadBalancer.start,
 * 2026-11-29); 64 is taken.
 */
const MAX_CONNECTING = 64;

/** Push mode: an overdue report's port probe goes out this fraction of the report interval after it was due (at most half the timeout). */
const PROBE_SLACK = 0.05;

/** Push mode: nudges for an overdue report, evenly spaced over the second half of the check timeout past its due time (`nextReportStep`). */
const REPORT_NUDGES = 3;

/** A failure that says nothing listens on the agent's port (the driver's words for ICMP port unreachable). */
const PORT_UNREACHABLE = /ICMP port unreachable/;
/** How long a connection attempt waits for that port's probe to come back before its handshake (ms). */
const PROBE_WAIT_MS = 100;

type HealthResponse = Extract<Message, { type: 'HEALTH_RESPONSE' }>;
/** What a good answer carries: HEALTH_RESPONSE or HEALTH_REPORT body (verdict fields optional: older agents send none). */
type Answer = { metrics: Metrics; ageMs: number };

export interface CheckStats {
  checks: number;
  failedChecks: number;
  lateChecks: number;
  /** Probes, nudges and timeouts that waited for the check socket to be read past their deadline (`postpone`). */
  postponedSteps: number;
}

/** The timings the checker runs with (ms); `configure` changes them (SIGHUP). */
export interface CheckTimings {
  intervalMs: number;
  timeoutMs: number;
  /**
   * A new connection's own budget: handshake, HELLO and (push mode) CONFIG_UPDATE, after which
   * the check's request still gets `timeoutMs` (connectTimeoutOf).
   */
  connectMs: number;
  reconnectMs: number;
  /** Push mode: agents send HEALTH_REPORT every this many ms; 0 = poll with HEALTH_REQUEST. */
  reportMs: number;
}

/** What the checker needs from the load balancer. */
export interface CheckerHost {
  readonly config: Readonly<QhcpConfig>;
  readonly hooks: Hooks;
  readonly logger: Logger;
  readonly node: string;
  frameObserver(): ((dir: 'in' | 'out', msg: Message, s: Session) => void) | undefined;
  /** Feeds one health event to the states table (core/health/states.ts). */
  health(b: Backend, event: HealthEvent, detail?: string): void;
}

/** The floor of a new connection's budget (connectTimeoutOf). */
export const CONNECT_TIMEOUT_MS = 1000;

/**
 * How long a new connection may take (QUIC handshake + HELLO + CONFIG_UPDATE) before its check
 * fails: the check timeout, but at least CONNECT_TIMEOUT_MS (HAProxy likewise bounds a check's
 * connect apart from its reply). A handshake costs CPU on both ends: with the check timeout of a
 * 100 ms interval (50 ms) a busy agent host never finished one in time, and every retry added a
 * handshake to its load (bench, starvation: N = 100 every 100 ms beside a 1000-agent farm, 1387
 * failed checks of 1430 in 5 s, "no handshake within 50 ms"; with this budget, all UP and 140
 * failed). The budget may outlast the interval: the next check then starts as this one ends.
 * The request on the new session still gets the check timeout. It changes nothing when the
 * check timeout is 1 s or more (intervals of 2 s and more by default). Below that, what it
 * costs: a server gone without an answer (host off, packets dropped) that has no live
 * connection fails each reconnect after 1 s, not after the check timeout, so a server that
 * loses its connection while UP and then stays silent is seen DOWN after about
 * `maxFailAttempts x max(interval, 1 s)` instead of `maxFailAttempts x interval`. Checks on a live
 * connection (timeouts, missed reports), ICMP port unreachable (a killed agent on a live host)
 * and refused handshakes fail as fast as before.
 */
export function connectTimeoutOf(timeoutMs: number): number {
  return Math.max(timeoutMs, CONNECT_TIMEOUT_MS);
}

/** The timings of a config (the wire allows push intervals of 0 = off, or 100 ms and more). */
export function timingsOf(config: Readonly<QhcpConfig>, timeoutSeconds: number): CheckTimings {
  const report = config.reportInterval * 1000;
  const intervalMs = config.checkInterval * 1000;
  const timeoutMs = timeoutSeconds * 1000;
  return {
    intervalMs,
    timeoutMs,
    connectMs: connectTimeoutOf(timeoutMs),
    reconnectMs: config.reconnectInterval * 1000,
    reportMs: report > 0 ? Math.max(100, Math.round(report)) : 0,
  };
}

/**
 * How long a check connection may hold back its acknowledgement of an answer or report
 * (quic.ts ConnectOptions.ackDeferMs): past the next request (poll), which comes one `periodMs`
 * later (up to `jitter` later still), or past the report that makes ACK_EVERY held back (push:
 * ACK_EVERY - 1 periods later), and a quarter period more. At 1000 backends it removes one
 * datagram per poll and leaves one per ACK_EVERY reports; a lost answer or report is repaired
 * by the nudges.
 */
export function ackDeferFor(periodMs: number, jitter: number): number {
  return Math.round(periodMs * (ACK_EVERY - 0.75 + jitter));
}

export class Checker {
  private connecting = 0;
  private readonly connectWaiters: Array<() => void> = [];
  private stopping = false;
  /**
   * Every backend's next step (a check, an overdue report's probe, a report timeout) in one
   * heap under one Node timer: a step moves in place, with no timer object and closure per check
   * or per pushed report (at N = 1000 those lived about a second each, long enough to be promoted
   * into V8's old generation and collected there).
   */
  private readonly timers = new DeadlineHeap<Backend>((now) => this.due(now));
  socket: ClientSocket | undefined;
  /** Presented to servers that ask for a client certificate (the `tls` hook; mutual TLS). */
  clientCert: { cert: string; key: string } | undefined;

  constructor(
    private readonly host: CheckerHost,
    public timings: CheckTimings,
    readonly stats: CheckStats,
    private readonly ca: string | undefined,
  ) {}

  private get config(): Readonly<QhcpConfig> {
    return this.host.config;
  }

  /** Starts a backend's loop: its first check `delayMs` from now. */
  begin(b: Backend, delayMs: number): void {
    this.schedule(b, delayMs);
  }

  /** Stops a backend's loop and closes its connection (politely: TERMINATE when the session allows it). */
  async end(b: Backend, reason: string): Promise<void> {
    b.removed = true;
    this.timers.remove(b);
    const s = b.session;
    if (!s || s.isClosed) return;
    // A check in flight: wait for its answer first (or the session's end), within the same bound
    // (docs/operations.md, "Signals").
    const until = Date.now() + 1000;
    // (TERMINATE is allowed with a request pending since the spec was tightened, but the answer is
    // still worth having: wait while one is awaited.)
    const awaiting = () => String(s.state).startsWith('AWAIT_') || !s.dfa.peek('send:TERMINATE');
    while (!s.isClosed && awaiting() && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    if (!s.isClosed && s.dfa.peek('send:TERMINATE')) await s.request('TERMINATE', { reason }, Math.max(100, until - Date.now())).catch(() => {});
    s.close(reason);
  }

  /** Stops every loop (stop()); sessions are ended by `end`. */
  halt(backends: Iterable<Backend>): void {
    this.stopping = true;
    for (const b of backends) this.timers.remove(b);
    for (const w of this.connectWaiters.splice(0)) w();
  }

  /** Sets `b`'s next step `ms` from now. */
  private at(b: Backend, ms: number, step: Backend['step']): void {
    b.step = step;
    b.waitsForRead = 0;
    this.timers.set(b, performance.now() + Math.max(0, ms));
  }

  /** Runs every step that is due (the heap's timer). */
  private due(now: number): void {
    for (let b = this.timers.peek(); b && b.deadline <= now; b = this.timers.peek()) {
      const deadline = b.deadline;
      this.timers.remove(b);
      if (this.stopping || b.removed) continue;
      // A step that acts on a message not arrived (a probe, a nudge, a timeout) waits until the
      // check socket has been read past its deadline: the message may be in the socket's buffer,
      // unread because this process was late (a stall, CPU starvation, a receive hold).
      if (b.step !== 'check' && this.socket && !this.socket.readPast(deadline)) {
        this.stats.postponedSteps++;
        this.postpone(b, deadline);
      } else this.step(b, now);
    }
  }

  /**
   * `b`'s step, due at `deadline`, waits until the check socket has been read past it
   * (ClientSocket.readPast: at most MAX_LOCAL_LAG_MS in driver.ts). The waiting steps share one
   * wait on the socket, for the first of them.
   */
  private postpone(b: Backend, deadline: number): void {
    b.waitsForRead = deadline;
    this.postponed.push(b);
    if (this.postponed.length === 1) this.socket!.whenReadPast(deadline, this.runPostponed);
  }

  private readonly postponed: Backend[] = [];

  /**
   * Runs the waiting steps the read has cleared; a step that nothing replaced meanwhile (a report
   * that came moves its backend's step) and whose own deadline is not cleared yet waits on.
   */
  private readonly runPostponed = (): void => {
    const list = this.postponed.splice(0);
    const now = performance.now();
    for (const b of list) {
      const deadline = b.waitsForRead;
      if (deadline === 0) continue;
      if (this.stopping || b.removed) b.waitsForRead = 0;
      else if (this.socket && !this.socket.readPast(deadline)) this.postpone(b, deadline);
      else {
        b.waitsForRead = 0;
        this.step(b, now);
      }
    }
  };

  /** Runs `b`'s due step. */
  private step(b: Backend, now: number): void {
    if (b.step === 'check') void this.check(b);
    else if (b.step === 'probe') {
      // An overdue report: probe the agent's port (a killed agent answers ICMP port unreachable
      // and the connection fails at once).
      b.session?.channel.probePeer();
      this.nextReportStep(b, now);
    } else if (b.step === 'nudge') {
      this.nudge(b);
      this.nextReportStep(b, now);
    } else if (b.step === 'answer') this.answerStep(b);
    else this.reportMissed(b, b.stepMs);
  }

  /**
   * Plans the next check `delayMs` from now, or one jittered interval (reconnect interval for
   * a DOWN server without a connection) after the start of the check that just ended
   * (`elapsedMs` ago), so that a slow or timed-out check does not stretch the cadence.
   */
  private schedule(b: Backend, delayMs?: number, elapsedMs = 0): void {
    if (this.stopping || b.removed) return;
    const live = b.session !== undefined && !b.session.isClosed;
    const base = b.state === 'DOWN' && !live ? this.timings.reconnectMs : this.timings.intervalMs;
    const j = this.config.jitter;
    const now = Date.now();
    let due = now + (delayMs ?? Math.max(0, base * (1 + (Math.random() * 2 - 1) * j) - elapsedMs));
    // With receive moderation on the check socket, checks start on its grid: those due within one
    // hold leave in one turn, and their answers are read together (driver.ts holdMs). Below
    // HOLD_MIN_CONNS connections the socket never holds, and checks start when due.
    const grid = this.socket?.holdingMs ?? 0;
    if (grid > 0) due = Math.ceil(due / grid) * grid;
    b.dueAt = due;
    this.at(b, due - now, 'check');
  }

  /** One health check: (re)connect when needed, HEALTH_REQUEST, judge, reschedule. */
  async check(b: Backend): Promise<void> {
    if (this.stopping || b.removed || b.checking) return;
    b.checking = true;
    const { intervalMs, timeoutMs, reportMs } = this.timings;
    const began = Date.now();
    const lag = began - b.dueAt;
    if (lag > intervalMs * 0.1) this.stats.lateChecks++;
    this.stats.checks++;
    b.checks++;
    // A new connection waits for a slot first; the check's time starts once it has one.
    const late = b.lateAnswer;
    const fresh = !late && !(b.session && !b.session.isClosed && b.session.state === 'READY');
    const release = fresh ? await this.connectSlot() : undefined;
    const started = performance.now();
    // A new connection (handshake, HELLO, CONFIG_UPDATE) has its own budget; the request then
    // gets the check timeout from when the session is ready (connectTimeoutOf).
    let deadline = started + (fresh ? this.timings.connectMs : timeoutMs);
    const left = () => Math.max(1, Math.round(deadline - performance.now()));
    let s: Session | undefined;
    try {
      if (this.stopping || b.removed) return;
      // A late answer to the last check's request is still awaited: this check waits for it.
      s = late ? b.session : await this.ensureSession(b, left);
      release?.();
      if (!late && s && reportMs > 0 && !b.pushing) b.pushing = await this.startReports(b, s, left);
      if (fresh) deadline = performance.now() + timeoutMs;
      const res = late ? await this.answerWithin(b, late, left(), true) : await this.healthRequest(b, s!, left());
      this.succeeded(b, res.body, late ? null : performance.now() - started);
    } catch (e) {
      // A check that crossed the server's DRAIN was dropped, not failed: DRAIN already moved the state.
      if (!this.stopping && !b.removed && !s?.drained) this.failed(b, describeFailure(e));
    } finally {
      release?.();
      b.checking = false;
      // Removed while this check connected: its session is nobody's now.
      if (b.removed && s && !s.isClosed) void this.end(b, 'removed from the load balancer');
      // Push mode: no more checks on this session; the next report is awaited instead.
      if (b.pushing && s && b.session === s && !s.isClosed) this.awaitReport(b, b.reportMs + this.timings.timeoutMs);
      else {
        b.pushing = false;
        this.schedule(b, undefined, Date.now() - began);
      }
    }
  }

  /** Waits for a connection-attempt slot (MAX_CONNECTING); returns its release, idempotent. */
  private async connectSlot(): Promise<() => void> {
    if (this.connecting < MAX_CONNECTING) this.connecting++;
    else await new Promise<void>((r) => this.connectWaiters.push(r)); // the releaser hands its slot over
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      const next = this.connectWaiters.shift();
      if (next) next();
      else this.connecting--;
    };
  }

  /** Push mode: asks the agent to report every `reportMs`; false when it declines (we poll then). */
  private async startReports(b: Backend, s: Session, left: () => number): Promise<boolean> {
    const seq = (b.seq = (b.seq + 1) >>> 0);
    const ack = (await s.request('CONFIG_UPDATE', { seq, reportIntervalMs: this.timings.reportMs }, left())) as Extract<Message, { type: 'CONFIG_ACK' }>;
    b.reportMs = ack.body.reportIntervalMs;
    return b.reportMs > 0;
  }

  /**
   * Push mode: a report is due within `ms`. A report that does not come is a failed check,
   * counted like a timed-out poll; at DOWN the session is closed and the check loop reconnects.
   */
  private awaitReport(b: Backend, ms: number): void {
    if (this.stopping || b.removed) return;
    b.dueAt = Date.now() + b.reportMs;
    const now = performance.now();
    b.reportBy = now + ms;
    b.stepMs = ms;
    // A little after the report is due, its port is probed if it has not come.
    b.probeAt = now + b.reportMs + Math.min(this.timings.timeoutMs / 2, b.reportMs * PROBE_SLACK);
    b.nudgesLeft = REPORT_NUDGES;
    this.nextReportStep(b, now);
  }

  /**
   * The next stage of waiting for a report: the port probe (`awaitReport`), then REPORT_NUDGES
   * nudges over the second half of the check timeout past the report's due time (at 1/2, 2/3 and
   * 5/6 of it; a poll's overdue answer gets two, `answerWithin`, and one more as the next check
   * starts), then the report timeout itself. Our acknowledgements of reports wait (quic.ts
   * ConnectOptions.ackDeferMs), so the agent's probe timeout no longer repairs a lost report
   * soon: a nudge does (its echo, acknowledged at once, lets the agent declare the report lost
   * and resend it; four datagrams, each lost at 20% loss). Under 20% loss at 0.5 s with a 250 ms
   * timeout, 60 reports: with two nudges 3 failed reports in one run, with three 0-1 per run
   * (never DOWN; 0 before acknowledgements waited). Not earlier than half the timeout: a report
   * is late by what the load balancer takes to read a burst of them (at N = 1000 on one farm, up
   * to ~100 ms), and nudges make work for the agents, later reports and more nudges (measured:
   * nudges from a quarter of the timeout on spiralled in 1 of 4 runs at N = 1000, 13,000 nudges
   * in 5 s and every backend failing reports).
   */
  private nextReportStep(b: Backend, now: number): void {
    const t = this.timings.timeoutMs;
    const nudgeAt = b.nudgesLeft > 0 ? b.reportBy - (t / 2) * (b.nudgesLeft / REPORT_NUDGES) : Infinity;
    if (b.probeAt < b.reportBy && b.probeAt <= nudgeAt) {
      const at = b.probeAt;
      b.probeAt = Infinity;
      this.at(b, at - now, 'probe');
    } else if (nudgeAt < b.reportBy) {
      b.nudgesLeft--;
      this.at(b, nudgeAt - now, 'nudge');
    } else this.at(b, b.reportBy - now, 'report');
  }

  private reportMissed(b: Backend, ms: number): void {
    if (this.stopping || b.removed) return;
    const s = b.session;
    if (!b.pushing || !s || s.isClosed) {
      b.pushing = false;
      return this.schedule(b);
    }
    this.stats.checks++;
    b.checks++;
    this.failed(b, `REPORT_TIMEOUT: no HEALTH_REPORT within ${ms} ms`);
    if (b.state === 'DOWN') {
      b.pushing = false;
      s.close('reports stopped');
      this.schedule(b);
    } else {
      // Still overdue (a lost report holds back the ones after it on the stream): nudge at once.
      s.channel.nudge();
      this.awaitReport(b, b.reportMs);
    }
  }

  /**
   * HEALTH_REQUEST on `s`. The check fails at its deadline, but the connection keeps waiting for
   * the answer until the check that would mark the backend DOWN (then it closes with 107), and
   * the next checks take a late answer. On a lossy path QUIC retransmits late: that fails a
   * check, not the connection and with it every following check that would need a new
   * handshake on the same lossy path (docs/operations.md, "Limits").
   */
  private healthRequest(b: Backend, s: Session, ms: number): Promise<HealthResponse> {
    const seq = (b.seq = (b.seq + 1) >>> 0);
    const grace = Math.max(1, this.config.maxFailAttempts - 1) * this.timings.intervalMs;
    const p = s.request('HEALTH_REQUEST', { seq }, this.timings.timeoutMs + grace) as Promise<HealthResponse>;
    b.lateAnswer = p;
    const clear = () => {
      if (b.lateAnswer === p) b.lateAnswer = undefined;
    };
    p.then(clear, clear);
    return this.answerWithin(b, p, ms, false);
  }

  /**
   * `p`, or RESPONSE_TIMEOUT after `ms`. An answer not there by half of `ms` is overdue: the
   * session's connection is nudged (a PING; quic.ts `Channel.nudge`), and a late answer awaited
   * by the next check is nudged as that check starts too. On a lossy path QUIC's own repair
   * waits out a probe timeout that doubles with each loss and starts from an RTT estimate the
   * handshake inflates: at 20% loss a request unanswered for the 1250 ms it may take (check
   * timeout + grace) marked a healthy backend DOWN in 5 of 8 runs of the loss test (none in 8
   * since). Under a loaded CI run one nudge at half the timeout was not always enough (a
   * false DOWN in 1 of 3 fresh-clone runs): a second goes out at three quarters. At most three
   * PINGs per check (two, and one more as a late answer's next check starts), only for answers
   * later than half the check timeout. No timer per check: the steps ride the backend's entry in
   * the checker's deadline heap.
   */
  private answerWithin(b: Backend, p: Promise<HealthResponse>, ms: number, overdue: boolean): Promise<HealthResponse> {
    if (overdue) this.nudge(b);
    return new Promise<HealthResponse>((resolve, reject) => {
      // Nudges at a half and three quarters of `ms` (each a chance to repair a lost request),
      // then the timeout: steps of the backend's entry in the checker's deadline heap (it has
      // none while a check runs), no timer of its own.
      b.answerFail = reject;
      b.answerNudgeMs = ms / 4;
      b.stepMs = this.timings.timeoutMs;
      b.nudgesLeft = 2;
      this.at(b, ms / 2, 'answer');
      const done = (): void => {
        if (b.answerFail !== reject) return;
        b.answerFail = undefined;
        if (b.step === 'answer') {
          this.timers.remove(b);
          b.waitsForRead = 0;
        }
      };
      p.then(
        (v) => {
          done();
          resolve(v);
        },
        (e) => {
          done();
          reject(e);
        },
      );
    });
  }

  /** The awaited answer's next step: a nudge, or (after two) RESPONSE_TIMEOUT. */
  private answerStep(b: Backend): void {
    if (b.nudgesLeft-- > 0) {
      this.nudge(b);
      this.at(b, b.answerNudgeMs, 'answer');
      return;
    }
    const fail = b.answerFail;
    b.answerFail = undefined;
    fail?.(new ProtocolError('RESPONSE_TIMEOUT', `no HEALTH_RESPONSE within ${Math.round(b.stepMs)} ms`));
  }

  /** A PING on the backend's connection (quic.ts `Channel.nudge`), when it has one. */
  private nudge(b: Backend): void {
    const s = b.session;
    if (s && !s.isClosed) s.channel.nudge();
  }

  private async ensureSession(b: Backend, left: () => number): Promise<Session> {
    const cur = b.session;
    const renewAt = (cur?.data as { renewAt?: number } | undefined)?.renewAt;
    if (cur && !cur.isClosed && cur.state === 'READY') {
      if (renewAt === undefined || Date.now() < renewAt) return cur;
      // Its token expires soon (the agent then ends it with AUTH_EXPIRED): a new connection
      // with a fresh token replaces it, made before the old one is closed, within half of what
      // is left of the check; if it fails, the old session (still valid) serves this check.
      const until = performance.now() + left() / 2;
      try {
        const s = await this.openSession(b, () => Math.max(1, Math.round(until - performance.now())));
        cur.close('credentials renewal');
        return s;
      } catch (e) {
        if (cur.isClosed) throw e;
        b.session = cur;
        this.host.logger.limited(`renew:${b.address}`, 'credentials renewal failed; the current session serves until it expires', { server: b.address, error: describeFailure(e) });
        return cur;
      }
    }
    return this.openSession(b, left);
  }

  /** A new connection and session to `b` (HELLO with fresh credentials); it becomes `b.session`. */
  private async openSession(b: Backend, left: () => number): Promise<Session> {
    const prev = b.session;
    if (prev && prev.state !== 'READY') prev.close('replaced');
    b.session = undefined;
    const { hooks, config } = this.host;
    // The port answered ICMP port unreachable last time: ask it again (one datagram) before a
    // handshake that would otherwise wait out its budget (a restarted agent answers nothing to it).
    // ICMP comes back within a round trip; a live port (or a silent path) answers nothing, so the
    // wait is short (PROBE_WAIT_MS) and the handshake goes ahead after it.
    if (b.portClosed && this.socket && (await withTimeout(this.socket.portClosed(b.host, b.port), Math.min(PROBE_WAIT_MS, left() / 2), { value: false }))) {
      throw new LocalError('QHCP_ERR_CONNECT', `cannot connect to ${b.host}:${b.port}: connection refused (ICMP port unreachable)`);
    }
    const token = await hooks.credentials.promise({ server: b.address, node: this.host.node });
    const reportMs = this.timings.reportMs;
    const channel = await connect({
      host: b.host,
      port: b.port,
      ...(config.serverName ? { serverName: config.serverName } : {}),
      ...(this.ca !== undefined ? { ca: this.ca } : {}),
      ...(this.clientCert ? { clientCert: this.clientCert } : {}),
      timeoutMs: left(),
      ...(this.socket ? { socket: this.socket } : {}),
      idleTimeoutMs: config.idleTimeout * 1000,
      // Checks or reports at least twice per idle timeout keep the connection alive already.
      keepAliveMs: (reportMs || this.timings.intervalMs) * 2 <= config.idleTimeout * 1000 ? 0 : config.keepAlive * 1000,
      ackDeferMs: ackDeferFor(reportMs || this.timings.intervalMs, config.jitter),
      maxFrameBytes: config.maxFrameBytes,
    });
    const s = new Session(channel, {
      role: 'client',
      observe: this.host.frameObserver(),
      onMessage: (m, sess) => this.onMessage(b, m, sess),
      onClose: (why, sess) => this.onClose(b, sess, why),
      onViolation: (err, sess) => this.host.logger.limited(`violation:${b.address}`, 'protocol violation by server', { server: b.address, remote: sess.remote, code: err.kind, reason: err.message }),
    });
    b.session = s;
    b.shuttingDown = false;
    const ack = (await s.request('HELLO', { versions: [...SUPPORTED_VERSIONS], role: 'checker', node: this.host.node, ...(token ? { token } : {}) }, left())) as Extract<Message, { type: 'ACK' }>;
    if (!SUPPORTED_VERSIONS.includes(ack.body.version)) {
      s.fail(new ProtocolError('UNSUPPORTED_VERSION', `server chose version ${ack.body.version}; we speak ${PROTOCOL_VERSION}`));
      throw new ProtocolError('UNSUPPORTED_VERSION', `server chose version ${ack.body.version}`);
    }
    if (ack.body.role !== 'agent') {
      s.fail(new ProtocolError('UNSUPPORTED_REQUEST', `peer is a ${ack.body.role}, not an agent`));
      throw new ProtocolError('UNSUPPORTED_REQUEST', `peer is a ${ack.body.role}, not an agent`);
    }
    s.peer = { node: ack.body.node, role: ack.body.role };
    b.name = ack.body.node;
    const exp = token ? tokenExpiry(token) : undefined;
    if (exp !== undefined) {
      const issued = Date.now();
      const margin = Math.min((exp - issued) / 2, this.timings.intervalMs + this.timings.timeoutMs + 5000);
      (s.data as { renewAt?: number }).renewAt = exp - margin;
    }
    return s;
  }

  private onMessage(b: Backend, msg: Message, s: Session): void {
    if (b.removed) return;
    if (msg.type === 'DRAIN') {
      b.shuttingDown = true;
      this.host.health(b, 'shutdown-drain', sanitize(msg.body.reason ?? 'no reason given', 256));
      // Finish politely; the server closes after TERMINATE_ACK or its grace, whichever is first.
      void s.request('TERMINATE', { reason: 'server is draining' }, Math.max(100, msg.body.graceMs)).catch(() => {});
    } else if (msg.type === 'HEALTH_REPORT') {
      if (b.pushing && b.session === s && !b.checking) {
        // Each pushed report is one good check.
        this.stats.checks++;
        b.checks++;
        if (Date.now() - b.dueAt > b.reportMs * 0.1) this.stats.lateChecks++;
        this.succeeded(b, msg.body, null);
        this.awaitReport(b, b.reportMs + this.timings.timeoutMs);
      } else this.succeeded(b, msg.body, null);
    }
  }

  private onClose(b: Backend, s: Session, why: SessionEnd): void {
    const current = b.session === s;
    if (current) b.session = undefined;
    if (this.stopping || b.removed) return;
    const pushLost = current && b.pushing && !b.checking;
    if (pushLost) {
      // Push mode: the connection went away; the check loop takes over and reconnects.
      b.pushing = false;
      this.timers.remove(b);
    }
    if (why.by !== 'local' && !(b.state === 'DRAINING' && b.shuttingDown)) b.lastError = why.error ? String(why.error) : `connection closed: ${why.reason}`;
    // Push mode has no check in flight to fail: a connection lost to a transport failure (ICMP
    // port unreachable after an overdue report's probe, ...) is the failed check itself.
    if (pushLost && why.by === 'error') {
      this.stats.checks++;
      b.checks++;
      this.failed(b, `connection lost: ${why.reason}`);
    }
    this.host.health(b, 'closed', why.reason);
    if (pushLost) this.schedule(b);
  }

  /**
   * A good answer: the counters, the agent's verdict, admin state and weight for this backend
   * (its service's verdict when it names one), then the events: agent admin and verdict changes
   * first, `check-ok` last.
   */
  private succeeded(b: Backend, body: Answer, latencyMs: number | null): void {
    const read = readVerdict(body, b.service);
    b.failures = 0;
    b.portClosed = false;
    if (read.verdict === 'NOT_SERVING') b.successes = 0;
    else b.successes++;
    b.everChecked = true;
    b.metrics = body.metrics;
    b.ageMs = body.ageMs;
    b.reportedAt = Date.now();
    if (latencyMs !== null) b.latencyMs = Math.round(latencyMs * 1000) / 1000;
    b.lastError = null;
    if (read.weight !== undefined) b.agentWeight = read.weight;
    const result: CheckResult = { ok: true, latencyMs: b.latencyMs, metrics: body.metrics, error: null, at: b.reportedAt };
    this.host.hooks.checked.call(b, result);
    const detail = read.reason;
    if (read.admin !== b.agentAdmin) {
      b.agentAdmin = read.admin;
      // The wire's `reason` is the verdict's; an admin change carries none.
      this.host.health(b, `agent:${read.admin}`);
    }
    if (read.verdict !== b.verdict) {
      b.verdict = read.verdict;
      this.host.health(b, `verdict:${read.verdict}`, detail);
    }
    this.host.health(b, 'check-ok', detail);
  }

  private failed(b: Backend, reason: string): void {
    this.stats.failedChecks++;
    b.successes = 0;
    b.failures++;
    b.lastError = reason;
    b.portClosed = PORT_UNREACHABLE.test(reason);
    this.host.hooks.checked.call(b, { ok: false, latencyMs: null, metrics: null, error: reason, at: Date.now() });
    this.host.health(b, 'check-failed', reason);
  }
}

/**
 * The verdict, admin state, weight and reason an answer gives for a backend: the overall ones, or
 * those of the backend's service (a service the agent does not report is NOT_SERVING). An agent
 * that sends no verdict (older agents) is SERVING and READY.
 */
export function readVerdict(body: Answer, service: string | undefined): { verdict: Verdict; admin: AdminState; weight?: number; reason?: string } {
  const o = body as Answer & { verdict?: unknown; admin?: unknown; weight?: unknown; reason?: unknown; services?: Record<string, { verdict?: unknown; reason?: unknown }> };
  const admin = ADMIN_STATES.includes(o.admin as AdminState) ? (o.admin as AdminState) : 'READY';
  const weight = typeof o.weight === 'number' && Number.isFinite(o.weight) ? Math.max(0, Math.min(256, o.weight)) : undefined;
  let verdict: Verdict = VERDICTS.includes(o.verdict as Verdict) ? (o.verdict as Verdict) : 'SERVING';
  let reason = typeof o.reason === 'string' && o.reason ? o.reason : undefined;
  if (service !== undefined) {
    const s = o.services && Object.hasOwn(o.services, service) ? o.services[service] : undefined;
    if (!s) {
      verdict = 'NOT_SERVING';
      reason = `the agent reports no service "${service}"`;
    } else {
      verdict = VERDICTS.includes(s.verdict as Verdict) ? (s.verdict as Verdict) : 'NOT_SERVING';
      reason = typeof s.reason === 'string' && s.reason ? s.reason : undefined;
    }
  }
  return { verdict, admin, ...(weight !== undefined ? { weight } : {}), ...(reason !== undefined ? { reason: sanitize(reason, 256) } : {}) };
}

/** "RESPONSE_TIMEOUT: no HEALTH_RESPONSE within 2000 ms", "AUTH_EXPIRED: token expired", ... */
export function describeFailure(e: unknown): string {
  if (e instanceof PeerError) return e.toString();
  if (e instanceof ProtocolError) return `${e.kind}: ${e.message}`;
  if (e instanceof LocalError) return e.message;
  return errorText(e);
}

/** The `exp` (epoch ms) of a JWT, read without verifying it (our own token); undefined for other credentials. */
export function tokenExpiry(token: string): number | undefined {
  const part = token.split('.')[1];
  if (!part) return undefined;
  try {
    const exp = (JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as { exp?: unknown }).exp;
    return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}
