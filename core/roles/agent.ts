/**
 * The server role (agent): listens on QUIC, authenticates each load balancer's HELLO through
 * the `verify` hook, answers HEALTH_REQUEST from the metrics cache that a background sampler
 * fills through the `collect` hook, applies CONFIG_UPDATE per session, and drains on stop.
 */
import { Core } from './core.ts';
import { ProtocolError, errorText } from '../errors.ts';
import { MetricsReport, cleanDefinitions, cleanMetrics, toVerdict, type MetricDefinition } from '../plugin/hooks.ts';
import { type AgentHealth, type Message, type Metrics } from '../protocol/messages.ts';
import { Session } from '../protocol/session.ts';
import { Listener, type Channel } from '../transport/quic.ts';
import { loadServerTls } from '../transport/tls.ts';
import type { QhcpConfig } from '../config/config.ts';
import type { Logger } from '../util/log.ts';
import { CheckRunner } from '../check/runner.ts';
import { buildChecks, type CheckEntry } from '../check/kinds.ts';
import { initialState, writeStateFile } from '../control/state.ts';
import { ControlServer, defaultControlSocket, type ControlAnswer, type ControlRequest } from '../control/socket.ts';
import { withTimeout } from '../util/timeout.ts';
import { every, type Tick } from '../util/tick.ts';

interface SessionPrefs {
  /** Metric names this session asked for (undefined = all). */
  metrics?: Set<string>;
  reportIntervalMs: number;
  /** The shared tick of its interval, for an interval other than the sample interval (those ride the sample's tick, after the sample). */
  reportTick?: Tick;
  /** Reports in a row not sent because the peer had not read the previous one (latest wins). */
  coalesced?: number;
}

/**
 * Reports in a row a session may leave unread (each one coalesced into the next: latest wins)
 * before it is closed with ERROR 302 SLOW_CONSUMER (docs/operations.md, "Limits").
 */
export const MAX_COALESCED_REPORTS = 20;

/** An agent's session: what its load balancer asked for, once HELLO is accepted. */
type AgentSession = Session<{ prefs?: SessionPrefs }>;

/** Counters exposed for tests, benchmarks and operators. */
export interface ServerStats {
  accepted: number;
  refused: number;
  violations: number;
  authFailures: number;
  healthRequests: number;
  samples: number;
}

/** Options a running agent takes from a reloaded config (SIGHUP); any other option that changed needs a restart. */
export const AGENT_RELOADABLE: ReadonlySet<string> = new Set(['checks', 'services']);

/** What an agent's reload changed. */
export interface AgentReloadResult {
  applied: string[];
  restart: string[];
  /** Checks before and after. */
  checks: [number, number];
  services: { added: string[]; removed: string[] };
}

/** "checks 2 -> 3, services +api -web; needs a restart (not applied): serverPort", or "no change". */
export function agentReloadSummary(r: AgentReloadResult): string {
  const name = (s: string) => (s === '' ? '(top-level)' : s);
  const head = r.applied.length ? [`checks ${r.checks[0]} -> ${r.checks[1]}`, ...r.services.added.map((s) => `+service ${name(s)}`), ...r.services.removed.map((s) => `-service ${name(s)}`)].join(', ') : '';
  const tail = r.restart.length ? `needs a restart (not applied): ${r.restart.join(', ')}` : '';
  return [head, tail].filter(Boolean).join('; ') || 'no change';
}

export class AgentServer extends Core {
  private listener: Listener | undefined;
  readonly sessions = new Set<AgentSession>();
  readonly stats: ServerStats = { accepted: 0, refused: 0, violations: 0, authFailures: 0, healthRequests: 0, samples: 0 };
  definitions: MetricDefinition[] = [];
  /** The last sample: values and when it was taken. */
  private sample: { values: Metrics; sampledAt: number } = { values: {}, sampledAt: Date.now() };
  /** The last full report (per-metric sample times), for metrics not due again yet. */
  private lastReport: MetricsReport | undefined;
  /** The sample on the process's shared tick of the sample interval (core/util/tick.ts). */
  private sampler: Tick | undefined;
  /** Sessions whose report interval is the sample interval: their reports follow each sample, in its wake. */
  private readonly tickReports = new Set<AgentSession>();
  /** Runs only while there are sessions (an agent without load balancers wakes only to sample). */
  private idleSweep: Tick | undefined;
  private sampling = false;
  private stopping = false;
  private authOpen = true;
  /** The check kinds plugins registered (checkKinds, at start), for a reload's checks too. */
  private userKinds: unknown[] = [];
  /** Checks, verdicts, admin state and weight; replaced at start by one with the configured checks. */
  runner: CheckRunner;
  private control: ControlServer | undefined;
  /** Health pushes sent because the verdict, admin state or weight changed. */
  healthPushes = 0;

  constructor(config: Readonly<QhcpConfig>, logger?: Logger, configFile?: string) {
    super('server', config, logger, configFile);
    this.runner = new CheckRunner([], [], { logger: this.logger });
  }

  /** The control socket's path, once listening. */
  get controlSocket(): string | undefined {
    return this.control?.path;
  }

  get port(): number {
    return this.listener?.port ?? 0;
  }
  get host(): string {
    return this.listener?.host ?? this.config.serverIp;
  }

  /** @throws LocalError (TLS files, listen) or PluginError (a plugin failed to start) */
  async start(): Promise<void> {
    const c = this.config;
    const tls = await loadServerTls({ certFile: c.certFile, keyFile: c.keyFile, host: c.serverIp });
    await this.hooks.start.promise(this);
    const { requestClientCert } = this.hooks.tls.call({ requestClientCert: false });
    const operator = initialState(c);
    this.userKinds = this.hooks.checkKinds.call([]);
    const { specs, services } = await this.buildChecks(c);
    this.runner = new CheckRunner(specs, services, {
      logger: this.logger,
      admin: operator.admin,
      ...(operator.reason ? { adminReason: operator.reason } : {}),
      weight: operator.weight,
    });
    // The first round runs before the listener opens: the first answer carries real verdicts.
    await this.runner.start();
    this.runner.onChange = () => this.pushHealth();
    this.definitions = cleanDefinitions(this.hooks.metricDefinitions.call([]), this.logger);
    this.restCollectTaps();
    // Not isUsed(): the guard's interceptor makes every hook "used".
    this.authOpen = this.hooks.verify.taps.length === 0;
    await this.takeSample();
    // After the metric plugins' sources (they joined the tick at the start hook): one wake reads,
    // samples and, once the sample is in (setImmediate: after its promise settles, still in this
    // wake), sends the reports that ride the tick. A collect still pending then (a slow async
    // plugin) does not hold them: they carry the previous sample, as a report between samples does.
    this.sampler = every(this.sampleMs, () => {
      // Stopping: no new samples; the reports that ride the tick go on until DRAIN is sent.
      if (!this.stopping) void this.takeSample();
      if (this.tickReports.size > 0) setImmediate(this.sendTickReports);
    });
    this.listener = await Listener.listen({
      ...this.listenerOptions({
        host: c.serverIp,
        port: c.serverPort,
        tls,
        logKey: 'refused',
        onRefused: () => this.stats.refused++,
        onChannel: (ch) => this.accept(ch),
        onExtraStream: (ch) => this.extraStream(ch),
      }),
      requestClientCert,
    });
    for (const w of tls.warnings) this.logger.warn(w);
    if (c.controlSocket !== false) {
      this.control = await ControlServer.listen(c.controlSocket ?? defaultControlSocket(this.port), (req) => this.command(req));
    }
    if (tls.generated) this.logger.warn('no -cert-file/-key-file given: using an in-memory self-signed certificate', { names: 'localhost,127.0.0.1,::1' });
    if (this.authOpen) this.logger.warn('AUTH IS OPEN: no auth plugin is configured, any load balancer may connect');
    const h = this.runner.health();
    this.logger.info('server listening', {
      address: `${this.host}:${this.port}`,
      ...this.pluginFields(),
      alpn: 'qhcp/1',
      metrics: this.definitions.length,
      checks: specs.length,
      verdict: h.verdict,
      admin: h.admin,
      weight: h.weight,
      ...(this.control ? { control: this.control.path } : {}),
    });
    await this.hooks.ready.promise(this);
  }

  /** The sample interval in whole ms (the tick's period). */
  private get sampleMs(): number {
    return Math.max(1, Math.round(this.config.sampleInterval * 1000));
  }

  private readonly sendTickReports = (): void => {
    for (const s of this.tickReports) this.report(s, s.data.prefs!);
  };

  /** The idle sweep runs while there are sessions; the first one starts it. */
  private startIdleSweep(): void {
    if (this.idleSweep || this.stopping) return;
    // A session pushed reports at least as often as the idle limit is served, not idle.
    this.idleSweep = this.sweepIdle(this.sessions, (s) => {
      const ms = s.data.prefs?.reportIntervalMs ?? 0;
      return ms > 0 && ms <= this.config.sessionIdleTimeout * 1000;
    });
  }

  private buildChecks(c: Readonly<QhcpConfig>) {
    return buildChecks({ checks: c.checks, services: c.services, userKinds: this.userKinds, logger: this.logger, configFile: this.configFile });
  }

  /**
   * Takes a new configuration (SIGHUP): its checks and services are built and run once, then
   * replace the running ones (answers never go without verdicts); the operator's admin state and
   * weight stay. Other changed options need a restart and are listed. All or nothing: a check
   * that does not build changes nothing.
   * @throws ConfigError naming the check that does not build
   */
  async reload(next: Readonly<QhcpConfig>): Promise<AgentReloadResult> {
    const prev = this.config;
    const changed = (Object.keys({ ...prev, ...next }) as Array<keyof QhcpConfig>).filter((k) => JSON.stringify(prev[k]) !== JSON.stringify(next[k]));
    const result: AgentReloadResult = { applied: changed.filter((k) => AGENT_RELOADABLE.has(k)), restart: changed.filter((k) => !AGENT_RELOADABLE.has(k)), checks: [0, 0], services: { added: [], removed: [] } };
    const old = this.runner;
    result.checks[0] = old.status().length;
    if (result.applied.length > 0) {
      const { specs, services } = await this.buildChecks(next);
      const op = old.operatorState;
      const runner = new CheckRunner(specs, services, { logger: this.logger, admin: op.admin, ...(op.reason ? { adminReason: op.reason } : {}), weight: op.weight });
      await runner.start();
      if (this.stopping) {
        await runner.stop();
        return result;
      }
      this.runner = runner;
      runner.onChange = () => this.pushHealth();
      await old.stop();
      const merged = { ...prev } as Record<string, unknown>;
      for (const k of result.applied) merged[k] = (next as unknown as Record<string, unknown>)[k];
      (this as { config: Readonly<QhcpConfig> }).config = Object.freeze(merged) as unknown as QhcpConfig;
      result.services = { added: runner.serviceNames.filter((n) => !old.serviceNames.includes(n)), removed: old.serviceNames.filter((n) => !runner.serviceNames.includes(n)) };
      // The load balancers hear the new verdicts at once, as after any change.
      this.pushHealth();
    }
    result.checks[1] = this.runner.status().length;
    return result;
  }

  /** Runs `collect` (each tap bounded by the plugin timeout) and replaces the cached sample. */
  private async takeSample(): Promise<void> {
    if (this.sampling) return;
    this.sampling = true;
    try {
      const report = this.nextReport();
      await this.hooks.collect.promise(report);
      this.lastReport = report;
      const times = Object.values(report.sampledAt);
      // The report's age is that of loadScore when there is one (the value balancers read and
      // judge staleness by); otherwise that of the oldest value.
      const at = report.sampledAt.loadScore ?? (times.length ? Math.min(...times) : Date.now());
      this.sample = { values: report.values, sampledAt: at };
      this.stats.samples++;
    } catch (e) {
      this.logger.limited('sampler', `metrics sample failed: ${errorText(e)}`);
    } finally {
      this.sampling = false;
    }
  }

  /** A new report holding the metrics that are not due yet (their sampleIntervalMs has not passed). */
  private nextReport(): MetricsReport {
    const report = new MetricsReport();
    const prev = this.lastReport;
    const now = Date.now();
    for (const d of prev ? this.definitions : []) {
      const at = prev!.sampledAt[d.name];
      if (d.sampleIntervalMs && at !== undefined && now - at < d.sampleIntervalMs) report.carry(prev!, d.name);
    }
    return report;
  }

  /** The core never calls a plugin's `collect` tap while none of the metrics it declared is due. */
  private restCollectTaps(): void {
    const byPlugin = new Map<string, string[]>();
    for (const d of this.definitions) byPlugin.set(d.plugin, [...(byPlugin.get(d.plugin) ?? []), d.name]);
    this.hooks.collect.intercept({
      register: (tap) => {
        const names = byPlugin.get(tap.name);
        if (!names) return tap;
        const fn = tap.fn as (...a: unknown[]) => unknown;
        tap.fn = (report: MetricsReport, ...rest: unknown[]) => {
          if (names.some((n) => report.due(n))) return fn(report, ...rest);
          if (tap.type === 'async') return (rest[0] as () => void)();
          return tap.type === 'promise' ? Promise.resolve() : undefined;
        };
        return tap;
      },
    });
  }

  /** The metrics for one session: the cached sample, filtered to what it asked for, transformed by `report`. */
  metricsFor(s: AgentSession | undefined): { metrics: Metrics; ageMs: number } & AgentHealth {
    const prefs = s?.data.prefs;
    let values = this.sample.values;
    if (prefs?.metrics) {
      values = {};
      for (const k of prefs.metrics) if (k in this.sample.values) values[k] = this.sample.values[k]!;
    }
    if (this.hooks.report.taps.length > 0) values = cleanMetrics(this.hooks.report.call({ ...values }, s && this.sessionInfo(s)), values);
    return { metrics: values, ageMs: Math.max(0, Math.min(86_400_000, Date.now() - this.sample.sampledAt)), ...this.health() };
  }

  /** The verdict, admin state and weight every HEALTH_RESPONSE and HEALTH_REPORT carries (the last results; no check runs here). */
  health(): AgentHealth {
    return this.runner.health();
  }

  /**
   * The verdict, admin state, weight or a service's verdict changed: a HEALTH_REPORT to every
   * session past ACK at once, whatever its report interval (poll mode too). Returns how many were sent.
   */
  pushHealth(): number {
    const h = this.runner.health();
    let sent = 0;
    for (const s of this.sessions) {
      if (!s.peer || s.isClosed) continue;
      if (s.trySend('HEALTH_REPORT', this.metricsFor(s))) sent++;
    }
    this.healthPushes += sent;
    this.logger.info('health changed', { verdict: h.verdict, admin: h.admin, weight: h.weight, ...(h.reason ? { reason: h.reason } : {}), pushedTo: sent });
    return sent;
  }

  /** One control-channel command (core/control/socket.ts). */
  command(req: ControlRequest): ControlAnswer {
    let pushed = 0;
    const before = this.healthPushes;
    switch (req.cmd) {
      case 'drain':
        this.runner.setAdmin('DRAIN', req.reason);
        break;
      case 'maint':
        this.runner.setAdmin('MAINT', req.reason);
        break;
      case 'ready':
        this.runner.setAdmin('READY');
        break;
      case 'weight':
        this.runner.setWeight(req.weight);
        break;
      case 'health':
        break;
    }
    pushed = this.healthPushes - before;
    if (req.cmd !== 'health') {
      this.logger.info('operator command', { cmd: req.cmd, ...this.runner.operatorState });
      if (this.config.stateFile) {
        try {
          writeStateFile(this.config.stateFile, this.runner.operatorState);
        } catch (e) {
          this.logger.error('cannot write the state file', { file: this.config.stateFile, error: errorText(e) });
          return { ok: false, error: `state applied but not saved to ${this.config.stateFile}: ${errorText(e)}` };
        }
      }
    }
    return {
      ok: true,
      health: this.runner.health(),
      operator: this.runner.operatorState,
      checks: this.runner.status().map((c) => ({ service: c.service, name: c.name, type: c.type, status: c.status ?? null, output: c.output, runs: c.runs })),
      pushed,
    };
  }

  private accept(ch: Channel): void {
    if (this.refuse(ch, this.sessions, this.stopping, 'refused')) {
      this.stats.refused++;
      return;
    }
    this.stats.accepted++;
    const session: AgentSession = new Session<{ prefs?: SessionPrefs }>(ch, {
      role: 'server',
      helloTimeoutMs: this.config.helloTimeout * 1000,
      observe: this.frameObserver(),
      unread: { perConnection: this.config.maxUnreadBytes, total: this.config.maxUnreadBytesTotal },
      stallMs: this.config.slowConsumerTimeout * 1000,
      onMessage: (m, s) => this.onMessage(m, s),
      onViolation: (err, s) => {
        this.stats.violations++;
        this.logger.limited('violation', 'protocol violation', { remote: s.remote, code: err.kind, reason: err.message });
      },
      onClose: (why, s) => {
        this.sessions.delete(s);
        this.tickReports.delete(s);
        if (this.sessions.size === 0) {
          this.idleSweep?.stop();
          this.idleSweep = undefined;
        }
        const prefs = s.data.prefs;
        prefs?.reportTick?.stop();
        this.logger.debug('session closed', { remote: s.remote, by: why.by, code: why.code, reason: why.reason });
      },
    });
    this.sessions.add(session);
    this.startIdleSweep();
  }

  private extraStream(ch: Channel): void {
    for (const s of this.sessions) {
      if (s.channel === ch) {
        this.stats.violations++;
        s.fail(new ProtocolError('EXTRA_STREAM', 'only one control stream is allowed per connection'));
      }
    }
  }

  private onMessage(msg: Message, s: AgentSession): void {
    if (s.state === 'DRAINING') return; // crossed our DRAIN: dropped, as the spec says
    switch (msg.type) {
      case 'HELLO':
        void this.hello(msg.body, s);
        return;
      case 'HEALTH_REQUEST': {
        this.stats.healthRequests++;
        s.send('HEALTH_RESPONSE', { seq: msg.body.seq, ...this.metricsFor(s) });
        return;
      }
      case 'CONFIG_UPDATE': {
        const prefs = s.data.prefs!;
        if (msg.body.metrics) {
          const known = new Set(this.definitions.map((d) => d.name));
          prefs.metrics = new Set(msg.body.metrics.length ? msg.body.metrics.filter((m) => known.has(m) || m in this.sample.values) : [...known]);
        }
        if (msg.body.reportIntervalMs !== undefined) this.setReportInterval(s, prefs, msg.body.reportIntervalMs);
        s.send('CONFIG_ACK', {
          seq: msg.body.seq,
          metrics: prefs.metrics ? [...prefs.metrics] : this.definitions.map((d) => d.name),
          reportIntervalMs: prefs.reportIntervalMs,
        });
        return;
      }
      case 'TERMINATE':
        s.send('TERMINATE_ACK', {});
        // The client closes after TERMINATE_ACK; close ourselves if it does not.
        setTimeout(() => s.close('terminated'), 1000).unref();
        return;
      case 'PICK':
      case 'STATUS':
      case 'WATCH':
        s.fail(new ProtocolError('UNSUPPORTED_REQUEST', `${msg.type} is served by a load balancer, not by an agent`));
        return;
      default:
        return;
    }
  }

  private setReportInterval(s: AgentSession, prefs: SessionPrefs, ms: number): void {
    prefs.reportTick?.stop();
    prefs.reportTick = undefined;
    this.tickReports.delete(s);
    prefs.reportIntervalMs = ms;
    if (ms <= 0) return;
    // The sample interval's reports ride the sample tick (one wake for sample and reports, the
    // reports after the sample); the first comes at the next tick, within one interval.
    if (ms === this.sampleMs) {
      this.tickReports.add(s);
      return;
    }
    // Any other interval: the shared fixed-rate tick of that interval (core/util/tick.ts; due
    // times ms apart, not setInterval's: Node re-arms an interval from when its callback ran, so
    // each late tick pushed every later report back and a loaded agent sent fewer than one per
    // interval, 86% of them in the bench, which its load balancers counted as late).
    prefs.reportTick = every(ms, () => this.report(s, prefs));
  }

  /**
   * One periodic report. Backpressure: while the last report is still unread, this one is not
   * queued behind it; the next tick sends the metrics of then (latest wins). A peer that reads
   * none for MAX_COALESCED_REPORTS intervals is closed.
   */
  private report(s: AgentSession, prefs: SessionPrefs): void {
    if (s.isClosed) return;
    if (s.channel.pendingBytes > 0) {
      prefs.coalesced = (prefs.coalesced ?? 0) + 1;
      if (prefs.coalesced >= MAX_COALESCED_REPORTS) {
        this.stats.violations++;
        this.logger.limited('violation', 'protocol violation', { remote: s.remote, code: 'SLOW_CONSUMER', reason: `${prefs.coalesced} reports unread` });
        s.fail(new ProtocolError('SLOW_CONSUMER', `${prefs.coalesced} reports in a row left unread (report interval ${prefs.reportIntervalMs} ms)`));
      }
      return;
    }
    prefs.coalesced = 0;
    s.trySend('HEALTH_REPORT', this.metricsFor(s));
  }

  private async hello(body: Extract<Message, { type: 'HELLO' }>['body'], s: AgentSession): Promise<void> {
    const version = this.helloVersion(s, body, 'checker');
    if (version === undefined) return;
    const verdict = this.authOpen ? undefined : toVerdict(await this.hooks.verify.promise({ token: body.token, node: body.node, remote: s.remote, role: body.role, certificates: s.channel.peerCertificates }));
    if (s.isClosed) return;
    if (verdict && !verdict.ok) {
      this.stats.authFailures++;
      this.logger.limited('auth', 'authentication failed', { remote: s.remote, node: body.node, code: verdict.kind, reason: verdict.reason });
      return s.fail(new ProtocolError(verdict.kind, verdict.reason));
    }
    s.peer = { node: body.node, role: body.role, ...(verdict?.ok && verdict.subject ? { subject: verdict.subject } : {}) };
    if (verdict?.ok) this.expireWith(s, verdict.expiresAt);
    s.data.prefs = { reportIntervalMs: 0 } satisfies SessionPrefs;
    if (body.maxFrameBytes !== undefined) s.peerMaxFrameBytes = body.maxFrameBytes;
    s.send('ACK', { version, node: this.node, role: 'agent', metrics: this.definitions.map((d) => d.name), maxFrameBytes: this.config.maxFrameBytes });
    this.logger.debug('load balancer connected', { remote: s.remote, node: body.node });
  }

  /**
   * Graceful stop: DRAIN to every session, wait up to the drain grace (or until all have gone),
   * then close the listener and run the `stop` hook.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    await this.control?.close();
    await this.runner.stop();
    this.idleSweep?.stop();
    const graceMs = Math.round(this.config.drainGrace * 1000);
    let drained = 0;
    for (const s of this.sessions) if (s.trySend('DRAIN', { reason: 'shutting down', graceMs })) drained++;
    // After DRAIN a session takes no HEALTH_REPORT (docs/protocol.md, the server's DFA).
    this.sampler?.stop();
    this.logger.info('draining', { sessions: drained, graceMs });
    if (this.sessions.size > 0 && graceMs > 0) {
      await withTimeout(Promise.all([...this.sessions].map((s) => s.closed())), graceMs, { value: undefined });
    }
    for (const s of this.sessions) s.close('shutting down');
    await this.listener?.stop(301, 'shutting down');
    await this.hooks.stop.promise(this);
    // The counters of a whole run, including bad-peer log lines the rate limit held back.
    const suppressed = [...this.logger.suppressed.values()].reduce((a, b) => a + b, 0);
    this.logger.info('server stopped', { ...this.stats, logLinesSuppressed: suppressed });
  }
}
