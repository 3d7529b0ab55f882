/**
 * The load balancer role: one QUIC session per backend, a jittered check loop per backend,
 * UP/DOWN/DRAINING with hysteresis (docs/operations.md, "Health semantics"), a status view,
 * and a query port answering STATUS and PICK through the `pick` hook.
 */
import { performance } from 'node:perf_hooks';
import { Core } from './core.ts';
import { ProtocolError, PeerError, LocalError, errorText } from '../errors.ts';
import { SUPPORTED_VERSIONS, PROTOCOL_VERSION, type Message, type Metrics, type ServerState, type ServerStatus } from '../protocol/messages.ts';
import { Session, type SessionEnd } from '../protocol/session.ts';
import { Listener, ClientSocket, connect, type Channel } from '../transport/quic.ts';
import { parseAddress, formatAddress } from '../util/address.ts';
import { readPem, selfSigned } from '../transport/tls.ts';
import { checkTimeoutOf, DEFAULT_SERVER_PORT, type QhcpConfig } from '../config/config.ts';
import type { BackendView, CheckResult, Transition } from '../plugin/hooks.ts';
import type { Logger } from '../util/log.ts';
import { SyncDispatcher } from '../plugin/sync.ts';

/**
 * Connection attempts in flight at most. A QUIC handshake costs milliseconds of CPU on each
 * side; 1000 started at once all miss their timeout and retry together (bench/, N = 1000).
 */
const MAX_CONNECTING = 16;

type HealthResponse = Extract<Message, { type: 'HEALTH_RESPONSE' }>;

/** One backend server as the load balancer sees it. */
export class Backend implements BackendView {
  state: ServerState = 'UNKNOWN';
  since = Date.now();
  failures = 0;
  successes = 0;
  latencyMs: number | null = null;
  metrics: Metrics = {};
  ageMs: number | null = null;
  reportedAt: number | null = null;
  lastError: string | null = null;
  checks = 0;
  /** The live session, when connected. */
  session: Session | undefined;
  timer: NodeJS.Timeout | undefined;
  checking = false;
  dueAt = 0;
  seq = 0;
  /** The last HEALTH_REQUEST while its answer is late (past the check deadline, connection kept). */
  lateAnswer: Promise<HealthResponse> | undefined;
  /** Push mode: the agent reports on its own (CONFIG_UPDATE reportIntervalMs), `timer` awaits the next report. */
  pushing = false;
  /** The report interval the agent agreed to (CONFIG_ACK). */
  reportMs = 0;

  constructor(
    readonly address: string,
    readonly host: string,
    readonly port: number,
    readonly weight: number,
  ) {}

  status(): ServerStatus {
    return {
      address: this.address,
      state: this.state,
      since: this.since,
      failures: this.failures,
      successes: this.successes,
      latencyMs: this.latencyMs,
      metrics: this.metrics,
      ageMs: this.ageMs,
      reportedAt: this.reportedAt,
      lastError: this.lastError,
      checks: this.checks,
    };
  }
}

export interface LoadBalancerStats {
  checks: number;
  failedChecks: number;
  lateChecks: number;
  transitions: number;
  picks: number;
  queries: number;
}

export class LoadBalancer extends Core {
  readonly backends: Backend[];
  readonly stats: LoadBalancerStats = { checks: 0, failedChecks: 0, lateChecks: 0, transitions: 0, picks: 0, queries: 0 };
  private listener: Listener | undefined;
  private socket: ClientSocket | undefined;
  private readonly querySessions = new Set<Session>();
  private stopping = false;
  private connecting = 0;
  private readonly connectWaiters: Array<() => void> = [];
  private readonly ca: string | undefined;
  private readonly intervalMs: number;
  private readonly timeoutMs: number;
  private readonly reconnectMs: number;
  /** Push mode (docs/operations.md): agents send HEALTH_REPORT every this many ms; 0 = poll with HEALTH_REQUEST. */
  readonly reportMs: number;
  private statusTimer: NodeJS.Timeout | undefined;
  /** Feeds the `sync` hook (plugins/sync), when a plugin taps it. */
  private syncer: SyncDispatcher | undefined;
  /** Called every check interval with the backends (the CLI prints the status view). */
  onStatus: ((backends: readonly Backend[]) => void) | undefined;

  /** @throws LocalError for a bad server address or CA file */
  constructor(config: Readonly<QhcpConfig>, logger?: Logger, configFile?: string) {
    super('loadbalancer', config, logger, configFile);
    this.backends = config.servers.map((entry) => {
      const { address, weight } = typeof entry === 'string' ? { address: entry, weight: 1 } : { weight: 1, ...entry };
      const a = parseAddress(address, DEFAULT_SERVER_PORT);
      return new Backend(formatAddress(a), a.host, a.port, weight);
    });
    const seen = new Set<string>();
    for (const b of this.backends) {
      if (seen.has(b.address)) throw new LocalError('QHCP_ERR_CLI_USAGE', `server ${b.address} is listed twice`);
      seen.add(b.address);
    }
    this.ca = config.caFile ? readPem(config.caFile, 'certificate') : undefined;
    this.intervalMs = config.checkInterval * 1000;
    this.timeoutMs = checkTimeoutOf(config) * 1000;
    this.reconnectMs = config.reconnectInterval * 1000;
    // The wire allows 0 (off) or 100 ms and more.
    const report = config.reportInterval * 1000;
    this.reportMs = report > 0 ? Math.max(100, Math.round(report)) : 0;
  }

  get port(): number {
    return this.listener?.port ?? 0;
  }

  async start(): Promise<void> {
    const c = this.config;
    await this.hooks.start.promise(this);
    // All checks leave through one UDP socket (transport.ts ClientSocket).
    this.socket = await ClientSocket.open();
    const tls = c.certFile && c.keyFile ? { cert: readPem(c.certFile, 'certificate'), key: readPem(c.keyFile, 'key') } : await selfSigned([c.loadbalancerHost]);
    this.listener = await Listener.listen({
      host: c.loadbalancerHost,
      port: c.loadbalancerPort,
      cert: tls.cert,
      key: tls.key,
      maxFrameBytes: Math.max(c.maxFrameBytes, 4 * 1024 * 1024),
      idleTimeoutMs: c.idleTimeout * 1000,
      handshakeTimeoutMs: c.helloTimeout * 1000,
      maxStreams: c.maxStreams,
      maxPendingHandshakes: c.maxPendingHandshakes,
      onHandshakeRefused: (remote) => this.logger.limited('query-refused', 'handshake refused on query port', { remote, reason: 'too many handshakes in progress' }),
      onChannel: (ch) => this.acceptQuery(ch),
      onExtraStream: (ch) => {
        for (const s of this.querySessions) if (s.channel === ch) s.fail(new ProtocolError('EXTRA_STREAM', 'only one control stream is allowed per connection'));
      },
    });
    if (!this.ca) this.logger.warn('no -cert-file (CA) given: server certificates are not verified');
    this.logger.info('load balancer started', {
      servers: this.backends.length,
      query: `${c.loadbalancerHost}:${this.port}`,
      interval: `${c.checkInterval}s`,
      mode: this.reportMs > 0 ? `push every ${this.reportMs / 1000}s` : 'poll',
      timeout: `${this.timeoutMs / 1000}s`,
      fall: c.maxFailAttempts,
      rise: c.riseAttempts,
      reconnect: `${c.reconnectInterval}s`,
      balancer: this.plugins.filter((p) => p.family === 'balancer').map((p) => p.name).join(',') || 'none',
    });
    // Spread the first round over up to one interval (at most 1 s) so checks do not fire at once.
    const spread = Math.min(this.intervalMs, 1000);
    for (const b of this.backends) this.schedule(b, Math.random() * spread);
    this.statusTimer = setInterval(() => this.onStatus?.(this.backends), this.intervalMs);
    this.statusTimer.unref();
    if (this.hooks.sync.taps.length > 0) {
      this.syncer = new SyncDispatcher(this.hooks, () => this.backends);
      this.syncer.start();
    }
    void this.hooks.alert.promise({ kind: 'started', node: this.node, at: Date.now(), servers: this.backends.map((b) => b.address) }).catch(() => {});
    await this.hooks.ready.promise(this);
  }

  /**
   * Plans the next check `delayMs` from now, or one jittered interval (reconnect interval for
   * a DOWN server without a connection) after the start of the check that just ended
   * (`elapsedMs` ago), so that a slow or timed-out check does not stretch the cadence.
   */
  private schedule(b: Backend, delayMs?: number, elapsedMs = 0): void {
    if (this.stopping) return;
    const live = b.session !== undefined && !b.session.isClosed;
    const base = b.state === 'DOWN' && !live ? this.reconnectMs : this.intervalMs;
    const j = this.config.jitter;
    const delay = delayMs ?? Math.max(0, base * (1 + (Math.random() * 2 - 1) * j) - elapsedMs);
    b.dueAt = Date.now() + delay;
    b.timer = setTimeout(() => void this.check(b), delay);
  }

  /** One health check: (re)connect when needed, HEALTH_REQUEST, judge, reschedule. */
  async check(b: Backend): Promise<void> {
    if (this.stopping || b.checking) return;
    b.checking = true;
    const began = Date.now();
    const lag = began - b.dueAt;
    if (lag > this.intervalMs * 0.1) this.stats.lateChecks++;
    this.stats.checks++;
    b.checks++;
    // A new connection waits for a slot first; the check's time starts once it has one.
    const late = b.lateAnswer;
    const fresh = !late && !(b.session && !b.session.isClosed && b.session.state === 'READY');
    const release = fresh ? await this.connectSlot() : undefined;
    const started = performance.now();
    const deadline = started + this.timeoutMs;
    const left = () => Math.max(1, Math.round(deadline - performance.now()));
    let s: Session | undefined;
    try {
      if (this.stopping) return;
      // A late answer to the last check's request is still awaited: this check waits for it.
      s = late ? b.session : await this.ensureSession(b, left);
      release?.();
      if (!late && s && this.reportMs > 0 && !b.pushing) b.pushing = await this.startReports(b, s, left);
      const res = late ? await this.answerWithin(late, left()) : await this.healthRequest(b, s!, left());
      this.succeeded(b, res.body.metrics, res.body.ageMs, late ? null : performance.now() - started);
    } catch (e) {
      // A check that crossed the server's DRAIN was dropped, not failed: DRAIN already moved the state.
      if (!this.stopping && !s?.drained) this.failed(b, describeFailure(e));
    } finally {
      release?.();
      b.checking = false;
      // Push mode: no more checks on this session; the next report is awaited instead.
      if (b.pushing && s && b.session === s && !s.isClosed) this.awaitReport(b, b.reportMs + this.timeoutMs);
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
    const ack = (await s.request('CONFIG_UPDATE', { seq, reportIntervalMs: this.reportMs }, left())) as Extract<Message, { type: 'CONFIG_ACK' }>;
    b.reportMs = ack.body.reportIntervalMs;
    return b.reportMs > 0;
  }

  /**
   * Push mode: a report is due within `ms`. A report that does not come is a failed check,
   * counted like a timed-out poll; at DOWN the session is closed and the check loop reconnects.
   */
  private awaitReport(b: Backend, ms: number): void {
    if (this.stopping) return;
    clearTimeout(b.timer);
    b.dueAt = Date.now() + b.reportMs;
    b.timer = setTimeout(() => this.reportMissed(b, ms), ms);
  }

  private reportMissed(b: Backend, ms: number): void {
    if (this.stopping) return;
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
    } else this.awaitReport(b, b.reportMs);
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
    const grace = Math.max(1, this.config.maxFailAttempts - 1) * this.intervalMs;
    const p = s.request('HEALTH_REQUEST', { seq }, this.timeoutMs + grace) as Promise<HealthResponse>;
    b.lateAnswer = p;
    const clear = () => {
      if (b.lateAnswer === p) b.lateAnswer = undefined;
    };
    p.then(clear, clear);
    return this.answerWithin(p, ms);
  }

  /** `p`, or RESPONSE_TIMEOUT after `ms`. */
  private answerWithin(p: Promise<HealthResponse>, ms: number): Promise<HealthResponse> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new ProtocolError('RESPONSE_TIMEOUT', `no HEALTH_RESPONSE within ${Math.round(this.timeoutMs)} ms`)), ms);
    });
    return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
  }

  private async ensureSession(b: Backend, left: () => number): Promise<Session> {
    if (b.session && !b.session.isClosed && b.session.state === 'READY') return b.session;
    b.session?.close('replaced');
    b.session = undefined;
    const token = await this.hooks.credentials.promise({ server: b.address, node: this.node });
    const channel = await connect({
      host: b.host,
      port: b.port,
      ...(this.config.serverName ? { serverName: this.config.serverName } : {}),
      ...(this.ca !== undefined ? { ca: this.ca } : {}),
      timeoutMs: left(),
      ...(this.socket ? { socket: this.socket } : {}),
      idleTimeoutMs: this.config.idleTimeout * 1000,
      // Checks or reports at least twice per idle timeout keep the connection alive already.
      keepAliveMs: (this.reportMs || this.intervalMs) * 2 <= this.config.idleTimeout * 1000 ? 0 : this.config.keepAlive * 1000,
      maxFrameBytes: this.config.maxFrameBytes,
    });
    const s = new Session(channel, {
      role: 'client',
      observe: this.frameObserver(),
      onMessage: (m, sess) => this.onBackendMessage(b, m, sess),
      onClose: (why, sess) => this.onBackendClose(b, sess, why),
      onViolation: (err, sess) => this.logger.limited(`violation:${b.address}`, 'protocol violation by server', { server: b.address, remote: sess.remote, code: err.kind, reason: err.message }),
    });
    b.session = s;
    const ack = (await s.request('HELLO', { versions: [...SUPPORTED_VERSIONS], role: 'checker', node: this.node, ...(token ? { token } : {}) }, left())) as Extract<Message, { type: 'ACK' }>;
    if (!SUPPORTED_VERSIONS.includes(ack.body.version)) {
      s.fail(new ProtocolError('UNSUPPORTED_VERSION', `server chose version ${ack.body.version}; we speak ${PROTOCOL_VERSION}`));
      throw new ProtocolError('UNSUPPORTED_VERSION', `server chose version ${ack.body.version}`);
    }
    if (ack.body.role !== 'agent') {
      s.fail(new ProtocolError('UNSUPPORTED_REQUEST', `peer is a ${ack.body.role}, not an agent`));
      throw new ProtocolError('UNSUPPORTED_REQUEST', `peer is a ${ack.body.role}, not an agent`);
    }
    s.peer = { node: ack.body.node, role: ack.body.role };
    return s;
  }

  private onBackendMessage(b: Backend, msg: Message, s: Session): void {
    if (msg.type === 'DRAIN') {
      if (b.state !== 'DRAINING') this.transition(b, 'DRAINING', `server draining: ${msg.body.reason ?? 'no reason given'}`);
      // Finish politely; the server closes after TERMINATE_ACK or its grace, whichever is first.
      void s.request('TERMINATE', { reason: 'server is draining' }, Math.max(100, msg.body.graceMs)).catch(() => {});
    } else if (msg.type === 'HEALTH_REPORT') {
      if (b.pushing && b.session === s && !b.checking) {
        // Each pushed report is one good check.
        this.stats.checks++;
        b.checks++;
        if (Date.now() - b.dueAt > b.reportMs * 0.1) this.stats.lateChecks++;
        this.succeeded(b, msg.body.metrics, msg.body.ageMs, null);
        this.awaitReport(b, b.reportMs + this.timeoutMs);
      } else this.succeeded(b, msg.body.metrics, msg.body.ageMs, null);
    }
  }

  private onBackendClose(b: Backend, s: Session, why: SessionEnd): void {
    const current = b.session === s;
    if (current) b.session = undefined;
    if (this.stopping) return;
    if (current && b.pushing && !b.checking) {
      // Push mode: the connection went away; the check loop takes over and reconnects.
      b.pushing = false;
      clearTimeout(b.timer);
      this.schedule(b);
    }
    if (b.state === 'DRAINING') {
      this.transition(b, 'DOWN', 'drained: connection closed');
      return;
    }
    if (why.by !== 'local') b.lastError = why.error ? String(why.error) : `connection closed: ${why.reason}`;
  }

  private succeeded(b: Backend, metrics: Metrics, ageMs: number, latencyMs: number | null): void {
    b.failures = 0;
    b.successes++;
    b.metrics = metrics;
    b.ageMs = ageMs;
    b.reportedAt = Date.now();
    if (latencyMs !== null) b.latencyMs = Math.round(latencyMs * 1000) / 1000;
    b.lastError = null;
    const result: CheckResult = { ok: true, latencyMs: b.latencyMs, metrics, error: null, at: b.reportedAt };
    this.hooks.checked.call(b, result);
    if (b.state === 'UNKNOWN') this.transition(b, 'UP', 'first good check');
    else if (b.state === 'DOWN' && b.successes >= this.config.riseAttempts) {
      this.transition(b, 'UP', `${b.successes} consecutive good check${b.successes > 1 ? 's' : ''}`);
    }
  }

  private failed(b: Backend, reason: string): void {
    this.stats.failedChecks++;
    b.successes = 0;
    b.failures++;
    b.lastError = reason;
    this.hooks.checked.call(b, { ok: false, latencyMs: null, metrics: null, error: reason, at: Date.now() });
    const max = this.config.maxFailAttempts;
    if ((b.state === 'UP' || b.state === 'UNKNOWN') && b.failures >= max) {
      this.transition(b, 'DOWN', `${b.failures} consecutive failed checks; last: ${reason}`);
    } else if (b.state === 'DRAINING') {
      this.transition(b, 'DOWN', `check failed while draining: ${reason}`);
    }
  }

  private transition(b: Backend, to: ServerState, reason: string): void {
    const from = b.state;
    if (from === to) return;
    b.state = to;
    b.since = Date.now();
    this.stats.transitions++;
    const t: Transition = {
      server: b.address,
      from,
      to,
      reason,
      at: b.since,
      failures: b.failures,
      successes: b.successes,
      lastError: b.lastError,
      metrics: b.metrics,
    };
    this.hooks.transition.call(t);
    void this.hooks.alert.promise({ kind: 'transition', node: this.node, transition: t }).catch(() => {});
  }

  /** Chooses one UP backend through the `pick` hook. */
  pick(key?: string): Backend | undefined {
    return this.choose(key).backend;
  }

  /**
   * Like `pick`, with the reason when no backend is chosen (PICK_RESPONSE `reason`). A balancer
   * tap that throws is skipped (the next one may answer); if none answers, the reason names it.
   */
  choose(key?: string): { backend: Backend; reason?: undefined } | { backend: undefined; reason: string } {
    this.stats.picks++;
    const up = this.backends.filter((b) => b.state === 'UP');
    if (up.length === 0) return { backend: undefined, reason: 'no server is UP' };
    if (this.hooks.pick.taps.length === 0) return { backend: undefined, reason: 'no balancer plugin is configured' };
    const before = this.lastPluginError;
    const chosen = this.hooks.pick.call({ servers: up, key, now: Date.now() });
    if (chosen && up.includes(chosen as Backend)) return { backend: chosen as Backend };
    const failed = this.lastPluginError !== before ? this.lastPluginError : undefined;
    const reason = failed ? `balancer failed: ${failed.message}` : chosen ? 'the balancer chose a server that is not UP' : 'the balancer chose no server';
    return { backend: undefined, reason: reason.slice(0, 1000) };
  }

  private acceptQuery(ch: Channel): void {
    if (this.refuse(ch, this.querySessions, this.stopping, 'query-refused')) return;
    const session = new Session(ch, {
      role: 'server',
      helloTimeoutMs: this.config.helloTimeout * 1000,
      observe: this.frameObserver(),
      onMessage: (m, s) => this.onQuery(m, s),
      onViolation: (err, s) => this.logger.limited('query-violation', 'protocol violation on query port', { remote: s.remote, code: err.kind, reason: err.message }),
      onClose: (_why, s) => this.querySessions.delete(s),
    });
    this.querySessions.add(session);
  }

  private onQuery(msg: Message, s: Session): void {
    if (s.state === 'DRAINING') return;
    switch (msg.type) {
      case 'HELLO': {
        const version = this.helloVersion(s, msg.body, 'query');
        if (version === undefined) return;
        s.peer = { node: msg.body.node, role: 'query' };
        s.send('ACK', { version, node: this.node, role: 'loadbalancer', metrics: [] });
        return;
      }
      case 'STATUS':
        this.stats.queries++;
        s.send('STATUS_RESPONSE', { seq: msg.body.seq, node: this.node, servers: this.backends.map((b) => b.status()) });
        return;
      case 'PICK': {
        this.stats.queries++;
        const c = this.choose(msg.body.key);
        s.send('PICK_RESPONSE', c.backend ? { seq: msg.body.seq, server: c.backend.address } : { seq: msg.body.seq, server: null, reason: c.reason });
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

  /** TERMINATE to every backend (bounded wait), close the query port, alert, stop hooks. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.statusTimer);
    this.syncer?.stop();
    for (const b of this.backends) clearTimeout(b.timer);
    for (const w of this.connectWaiters.splice(0)) w();
    await Promise.all(
      this.backends.map(async (b) => {
        const s = b.session;
        if (!s || s.isClosed) return;
        if (s.dfa.peek('send:TERMINATE')) await s.request('TERMINATE', { reason: 'load balancer stopping' }, 1000).catch(() => {});
        s.close('load balancer stopping');
      }),
    );
    for (const s of this.querySessions) s.close('shutting down');
    await this.listener?.stop(301, 'shutting down');
    await this.socket?.close();
    await this.hooks.alert.promise({ kind: 'stopped', node: this.node, at: Date.now(), servers: this.backends.map((b) => b.address) }).catch(() => {});
    await this.hooks.stop.promise(this);
    this.logger.info('load balancer stopped');
  }
}

/** "RESPONSE_TIMEOUT: no HEALTH_RESPONSE within 2000 ms", "AUTH_EXPIRED: token expired", ... */
export function describeFailure(e: unknown): string {
  if (e instanceof PeerError) return e.toString();
  if (e instanceof ProtocolError) return `${e.kind}: ${e.message}`;
  if (e instanceof LocalError) return e.message;
  return errorText(e);
}

