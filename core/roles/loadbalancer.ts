/**
 * The load balancer role, wired from its parts:
 *   core/health/backend.ts   the backend record (read by everyone as BackendView)
 *   core/health/states.ts    the health states and transitions, as data
 *   core/health/checker.ts   per-backend connection, poll and push loops, reconnects
 *   core/roles/query-port.ts the QUIC query port answering STATUS and PICK
 *   core/balance/pool.ts     balancing per pool (LocalBalancer: strategy, slow start, panic)
 * This file owns the pool (add, remove, admin state, weight), moves states along the table,
 * tells the balancers of changes, and starts and stops the rest.
 */
import { Core } from './core.ts';
import { LocalError } from '../errors.ts';
import type { ServerStatus } from '../protocol/messages.ts';
import { ClientSocket } from '../transport/quic.ts';
import { holdFor, type DriverStats } from '../transport/driver.ts';
import { parseAddress, formatAddress } from '../util/address.ts';
import { loadServerTls, readPem } from '../transport/tls.ts';
import { checkTimeoutOf, DEFAULT_SERVER_PORT, type QhcpConfig, type ServerEntry } from '../config/config.ts';
import type { BackendView, Transition } from '../plugin/hooks.ts';
import { sanitize } from '../util/sanitize.ts';
import type { Logger } from '../util/log.ts';
import { Backend } from '../health/backend.ts';
import { Checker, timingsOf, type CheckStats, type CheckTimings } from '../health/checker.ts';
import { ruleFor, reasonOf, type AdminState, type HealthEvent } from '../health/states.ts';
import { QueryPort, type PickAnswer, type QueryStats } from './query-port.ts';
import { SyncDispatcher } from '../plugin/sync.ts';
import type { ClusterInfo, ClusterNode } from '../cluster/group.ts';
import { clusterOptions } from '../cluster/options.ts';
import { PoolBalancers } from '../balance/pool.ts';

/** The check socket's receive moderation: 2% of the shortest of the check and report intervals. */
const checkHold = (t: CheckTimings): number => holdFor(Math.min(t.intervalMs, t.reportMs > 0 ? t.reportMs : t.intervalMs));

export { Backend } from '../health/backend.ts';
export { describeFailure } from '../health/checker.ts';

export interface LoadBalancerStats extends CheckStats, QueryStats {
  transitions: number;
}

/**
 * Options a running load balancer takes from a reloaded config (SIGHUP); any other option that
 * changed needs a restart. Timings apply from each backend's next check; connection options
 * (idleTimeout, keepAlive, serverName, reportInterval) from its next connection.
 */
export const RELOADABLE = ['servers', 'panicThreshold', 'slowStart', 'checkInterval', 'checkTimeout', 'reconnectInterval', 'reportInterval', 'jitter', 'maxFailAttempts', 'riseAttempts', 'degraded', 'status', 'statusSummary', 'idleTimeout', 'keepAlive', 'serverName'] as const;

/** What a reload changed. */
export interface ReloadResult {
  added: string[];
  removed: string[];
  /** Backends whose configured weight changed. */
  reweighted: string[];
  /** Changed options now in force (besides `servers`). */
  applied: string[];
  /** Changed options that need a restart (the running values stay). */
  restart: string[];
}

/** "+1 server (a:1), -1 server (b:1), 1 weight changed; applied: checkInterval; needs a restart: loadbalancerPort", or "no change". */
export function reloadSummary(r: ReloadResult): string {
  const n = (k: number, what: string) => `${k} ${what}${k === 1 ? '' : 's'}`;
  const parts: string[] = [];
  if (r.added.length) parts.push(`+${n(r.added.length, 'server')} (${r.added.join(', ')})`);
  if (r.removed.length) parts.push(`-${n(r.removed.length, 'server')} (${r.removed.join(', ')})`);
  if (r.reweighted.length) parts.push(`${n(r.reweighted.length, 'weight')} changed (${r.reweighted.join(', ')})`);
  const head = parts.join(', ');
  const tail = [r.applied.length ? `applied: ${r.applied.join(', ')}` : '', r.restart.length ? `needs a restart (not applied): ${r.restart.join(', ')}` : ''].filter(Boolean);
  const text = [head, ...tail].filter(Boolean).join('; ');
  return text || 'no change';
}

/** A service name as backends may name one (`host:4243/web`); the same rule as the wire's `services` keys. */
export const SERVICE_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

/**
 * A `servers` entry as a backend's identity: `{ address: "host:port[/service]", host, port, service, weight }`.
 * @throws LocalError for a bad address or service name
 */
export function parseBackend(entry: string | ServerEntry): { address: string; host: string; port: number; service?: string; weight: number } {
  const { address, weight } = typeof entry === 'string' ? { address: entry, weight: 1 } : { weight: 1, ...entry };
  const slash = address.indexOf('/');
  const hostPort = slash >= 0 ? address.slice(0, slash) : address;
  const service = slash >= 0 ? address.slice(slash + 1) : undefined;
  if (service !== undefined && !SERVICE_NAME.test(service)) {
    throw new LocalError('QHCP_ERR_CLI_USAGE', `bad address "${address}": service name must be 1-64 letters, digits, _ . -`);
  }
  const a = parseAddress(hostPort, DEFAULT_SERVER_PORT);
  const base = formatAddress(a);
  return { address: service !== undefined ? `${base}/${service}` : base, host: a.host, port: a.port, weight, ...(service !== undefined ? { service } : {}) };
}

export class LoadBalancer extends Core {
  /** The pool, in configuration order (balancers get UP backends in this order). */
  private readonly pool = new Map<string, Backend>();
  readonly stats: LoadBalancerStats = { checks: 0, failedChecks: 0, lateChecks: 0, postponedSteps: 0, transitions: 0, picks: 0, queries: 0 };
  private readonly checker: Checker;
  private readonly query: QueryPort;
  private stopping = false;
  private started = false;
  private statusTimer: NodeJS.Timeout | undefined;
  /** Feeds the `sync` hook (plugins/sync), when a plugin taps it. */
  private syncer: SyncDispatcher | undefined;
  /** The load balancer group (`cluster`, core/cluster/): it checks our share and fills every record. */
  private cluster: ClusterNode | undefined;
  /** Balancing per pool (core/balance): PICK goes through it. */
  private readonly balance = new PoolBalancers(this);
  /** Called every check interval, and with `change` on every transition, addition or removal (the CLI prints the status view). */
  onStatus: ((backends: readonly Backend[], change: boolean) => void) | undefined;

  /** @throws LocalError for a bad server address or CA file */
  constructor(config: Readonly<QhcpConfig>, logger?: Logger, configFile?: string) {
    super('loadbalancer', config, logger, configFile);
    for (const entry of config.servers) {
      const p = parseBackend(entry);
      if (this.pool.has(p.address)) throw new LocalError('QHCP_ERR_CLI_USAGE', `server ${p.address} is listed twice`);
      this.pool.set(p.address, new Backend(p.address, p.host, p.port, p.weight, p.service));
    }
    if (config.cluster) clusterOptions(config.cluster); // a bad URL or option stops start-up here
    const ca = config.caFile ? readPem(config.caFile, 'certificate') : undefined;
    this.checker = new Checker(this, timingsOf(config, checkTimeoutOf(config)), this.stats, ca);
    this.query = new QueryPort(this, { status: (service) => this.status(service), pickAnswer: (key, service) => this.pickAnswer(key, service), feed: () => this.feed() }, this.stats);
    // A check changes metrics, weights and report times in place: balancers re-read them at the next pick.
    this.hooks.checked.tap('balance', () => this.balance.changed());
  }

  get port(): number {
    return this.query.port;
  }

  /**
   * Takes a new configuration (SIGHUP): backends added and removed without touching the
   * others' state, weights changed, reloadable options applied (RELOADABLE), the rest listed as
   * needing a restart. All or nothing: a config whose servers do not parse changes nothing.
   * @throws LocalError for a bad or repeated server, or an empty list
   */
  async reload(next: Readonly<QhcpConfig>): Promise<ReloadResult> {
    const wanted = new Map<string, ReturnType<typeof parseBackend>>();
    for (const entry of next.servers) {
      const p = parseBackend(entry);
      if (wanted.has(p.address)) throw new LocalError('QHCP_ERR_CLI_USAGE', `server ${p.address} is listed twice`);
      wanted.set(p.address, p);
    }
    if (wanted.size === 0) throw new LocalError('QHCP_ERR_CLI_USAGE', 'no servers: the reloaded configuration lists none');
    const prev = this.config;
    const changed = (Object.keys({ ...prev, ...next }) as Array<keyof QhcpConfig>).filter((k) => k !== 'servers' && JSON.stringify(prev[k]) !== JSON.stringify(next[k]));
    const live = new Set<string>(RELOADABLE);
    const result: ReloadResult = { added: [], removed: [], reweighted: [], applied: changed.filter((k) => live.has(k)), restart: changed.filter((k) => !live.has(k)) };
    // The running config keeps what needs a restart; the rest comes from the new one.
    const merged = { ...prev } as Record<string, unknown>;
    for (const k of [...result.applied, 'servers']) merged[k] = (next as unknown as Record<string, unknown>)[k];
    (this as { config: Readonly<QhcpConfig> }).config = Object.freeze(merged) as unknown as QhcpConfig;
    const before = this.checker.timings.intervalMs;
    this.checker.timings = timingsOf(this.config, checkTimeoutOf(this.config));
    this.cluster?.retime(this.checker.timings);
    if (this.checker.socket) this.checker.socket.holdMs = checkHold(this.checker.timings);
    if (this.started && this.checker.timings.intervalMs !== before) {
      clearInterval(this.statusTimer);
      this.statusTimer = setInterval(() => this.onStatus?.(this.records(), false), this.checker.timings.intervalMs);
      this.statusTimer.unref();
    }
    result.removed = [...this.pool.keys()].filter((a) => !wanted.has(a));
    await Promise.all(result.removed.map((a) => this.removeBackend(a)));
    for (const [address, p] of wanted) {
      const b = this.pool.get(address);
      if (!b) {
        this.addBackend({ address, weight: p.weight });
        result.added.push(address);
      } else if (b.configWeight !== p.weight) {
        b.configWeight = p.weight;
        result.reweighted.push(address);
      }
    }
    // Configuration order is pick order: follow the new list.
    const order = [...wanted.keys()].map((a) => this.pool.get(a)!);
    this.pool.clear();
    for (const b of order) this.pool.set(b.address, b);
    if (result.applied.some((k) => k === 'panicThreshold' || k === 'slowStart' || k === 'degraded')) this.balance.reset();
    this.balance.changed(true);
    return result;
  }

  /** Push mode (docs/operations.md): agents send HEALTH_REPORT every this many ms; 0 = poll with HEALTH_REQUEST. */
  get reportMs(): number {
    return this.checker.timings.reportMs;
  }

  /** The backends, read-only, in configuration order. */
  backends(): readonly BackendView[] {
    return [...this.pool.values()];
  }

  /** The internal records (the status view, benchmarks). */
  records(): readonly Backend[] {
    return [...this.pool.values()];
  }

  /** Query-port connections open and accepted, queries delayed by the rate limits (the HTTP listener's /metrics). */
  queryConnections(): { open: number; accepted: number; limited: number; watching: number; resyncs: number } {
    return this.query.connections();
  }

  /** The QUIC driver's counters: the check socket (connections to agents) and the query port (the HTTP listener's /metrics). */
  transportStats(): { check: Readonly<DriverStats> | undefined; query: Readonly<DriverStats> | undefined } {
    return { check: this.checker.socket?.stats, query: this.query.transportStats };
  }

  /** STATUS: every backend's status, or those naming `service`. */
  status(service?: string): ServerStatus[] {
    return this.records()
      .filter((b) => service === undefined || b.service === service)
      .map((b) => this.balance.decorate(b.status(), service));
  }

  async start(): Promise<void> {
    const c = this.config;
    await this.hooks.start.promise(this);
    // A client certificate an auth plugin (mtls) presents to servers that ask for one.
    this.checker.clientCert = this.hooks.tls.call({ requestClientCert: false }).clientCert;
    // All checks leave through one UDP socket (transport.ts ClientSocket), read with receive
    // moderation at 2% of the check interval (driver.ts holdFor; only with 64+ connections).
    this.checker.socket = await ClientSocket.open('::', { holdMs: checkHold(this.checker.timings) });
    // The query port's certificate: checked as an agent's is (pair, validity, key file mode).
    const tls = await loadServerTls({ certFile: c.certFile, keyFile: c.keyFile, host: c.loadbalancerHost, names: { cert: 'certFile', key: 'keyFile' } });
    for (const w of tls.warnings) this.logger.warn(w);
    await this.query.listen(c, tls);
    const t = this.checker.timings;
    if (!c.caFile) this.logger.warn('no -cert-file (CA) given: server certificates are not verified');
    this.logger.info('load balancer started', {
      ...this.pluginFields(),
      servers: this.pool.size,
      query: `${c.loadbalancerHost}:${this.port}`,
      interval: `${c.checkInterval}s`,
      mode: t.reportMs > 0 ? `push every ${t.reportMs / 1000}s` : 'poll',
      timeout: `${t.timeoutMs / 1000}s`,
      fall: c.maxFailAttempts,
      rise: c.riseAttempts,
      reconnect: `${c.reconnectInterval}s`,
      balancer: this.plugins.filter((p) => p.family === 'balancer').map((p) => p.name).join(',') || 'none',
    });
    // In a group, the group checks our share (ioredis is loaded only then).
    this.cluster = c.cluster ? (await import('../cluster/group.ts')).clusterFor(this) : undefined;
    // Spread the first round over up to one interval (at most 1 s) so checks do not fire at once.
    const spread = Math.min(t.intervalMs, 1000);
    if (this.cluster) await this.cluster.start(this.checker.socket);
    else for (const b of this.pool.values()) this.checker.begin(b, Math.random() * spread);
    this.started = true;
    this.balance.changed(true);
    this.statusTimer = setInterval(() => this.onStatus?.(this.records(), false), t.intervalMs);
    this.statusTimer.unref();
    if (this.hooks.sync.taps.length > 0) this.feed().start();
    void this.hooks.alert.promise({ kind: 'started', node: this.node, at: Date.now(), servers: [...this.pool.keys()] }).catch(() => {});
    await this.hooks.ready.promise(this);
  }

  /** The view and its changes, per tick (SyncDispatcher): for `sync` plugins and WATCH sessions; made on first use. */
  private feed(): SyncDispatcher {
    return (this.syncer ??= new SyncDispatcher(this.hooks, () => this.backends()));
  }

  /**
   * Adds a backend (`host:port` or `host:port/service`) and starts checking it.
   * @throws LocalError for a bad address or one already in the pool
   */
  addBackend(address: string | ServerEntry): BackendView {
    const p = parseBackend(address);
    if (this.pool.has(p.address)) throw new LocalError('QHCP_ERR_CLI_USAGE', `server ${p.address} is already in the pool`);
    const b = new Backend(p.address, p.host, p.port, p.weight, p.service);
    this.pool.set(p.address, b);
    this.balance.changed(true);
    if (this.started && !this.stopping) {
      if (this.cluster) this.cluster.changed();
      else this.checker.begin(b, Math.random() * Math.min(this.checker.timings.intervalMs, 1000));
    }
    this.onStatus?.(this.records(), true);
    this.syncer?.schedule();
    return b;
  }

  /** Removes a backend: its loop stops, its connection ends politely (TERMINATE). False when unknown. */
  async removeBackend(address: string): Promise<boolean> {
    const b = this.find(address);
    if (!b) return false;
    this.pool.delete(b.address);
    this.cluster?.changed();
    this.balance.changed(true);
    this.onStatus?.(this.records(), true);
    this.syncer?.schedule();
    await this.checker.end(b, 'removed from the load balancer');
    return true;
  }

  /**
   * The load balancer's own admin state for a backend, separate from the agent's (the stricter
   * of the two is in force). `reason` goes into the transition's reason.
   * @throws LocalError when the backend is unknown
   */
  setAdmin(address: string, admin: AdminState, reason?: string): void {
    const b = this.require(address);
    if (b.adminState === admin) return;
    b.adminState = admin;
    this.balance.changed(true);
    this.health(b, `operator:${admin}`, admin === 'READY' ? reason : (reason ?? 'set by the operator'));
  }

  /** The configured weight of a backend (the agent's weight scales it). @throws LocalError when unknown or out of range */
  setWeight(address: string, weight: number): void {
    if (!Number.isFinite(weight) || weight < 0 || weight > 1000) throw new LocalError('QHCP_ERR_CLI_USAGE', `weight must be 0-1000, got ${weight}`);
    this.require(address).configWeight = weight;
    this.balance.changed(true);
  }

  private find(address: string): Backend | undefined {
    const hit = this.pool.get(address);
    if (hit) return hit;
    try {
      return this.pool.get(parseBackend(address).address);
    } catch {
      return undefined;
    }
  }

  private require(address: string): Backend {
    const b = this.find(address);
    if (!b) throw new LocalError('QHCP_ERR_CLI_USAGE', `no server ${address} in the pool`);
    return b;
  }

  /** Moves `b` along the states table for `event` (core/health/states.ts). */
  health(b: Backend, event: HealthEvent, detail?: string): void {
    // In a group only operators' events come here: the group's state decides, theirs goes on top.
    if (this.cluster) return this.cluster.operator(b, detail);
    const rule = ruleFor(b.state, event, b, { fall: this.config.maxFailAttempts, rise: this.config.riseAttempts });
    if (!rule || rule.to === b.state) return;
    this.transition(b, rule.to, reasonOf(rule, b, detail));
  }

  /** Moves a record to `to` (the group's decision, core/cluster/), with the transition's hooks. */
  moveTo(b: Backend, to: Backend['state'], reason: string): void {
    this.transition(b, to, reason);
  }

  /** The group wrote another member's results into a record: the balancers' pools re-read them (as after a local check). */
  refreshed(): void {
    this.balance.changed();
  }

  /** The group's membership and mode, when in one (metrics, /api/status). */
  clusterInfo(): ClusterInfo | undefined {
    return this.cluster?.info();
  }

  private transition(b: Backend, to: Backend['state'], reason: string): void {
    const from = b.state;
    if (from === to) return;
    b.state = to;
    b.since = Date.now();
    reason = sanitize(reason, 1000);
    b.reason = reason;
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
    this.onStatus?.(this.records(), true);
    void this.hooks.alert.promise({ kind: 'transition', node: this.node, transition: t }).catch(() => {});
    // After the transition's own alert, so a panic it causes is reported after it.
    this.balance.changed(true);
  }

  /** Chooses one backend through the balancers (core/balance; UP ones, DEGRADED ones as `degraded` says, all known ones in panic mode). */
  pick(key?: string, service?: string): Backend | undefined {
    return this.choose(key, service).backend;
  }

  /**
   * Like `pick`, with the balancer that chose and why, or the reason when no backend is chosen
   * (PICK_RESPONSE). Balancers are asked in the order they tapped `pick`; one that throws or
   * answers nothing passes to the next; if none answers, the reason names it. With `service`,
   * only the backends that name that service are offered (core/balance/pool.ts).
   */
  choose(key?: string, service?: string): { backend: Backend; balancer: string; why: string; reason?: undefined } | { backend: undefined; reason: string } {
    this.stats.picks++;
    const before = this.lastPluginError;
    const c = this.balance.choose(key, service);
    if (c.backend) {
      this.countPick(c.balancer, 'picked');
      return c as { backend: Backend; balancer: string; why: string };
    }
    const failed = this.lastPluginError !== before ? this.lastPluginError : undefined;
    const noAnswer = c.reason === 'the balancer chose no server';
    this.countPick('none', failed ? 'error' : noAnswer ? 'no_answer' : 'none_up');
    return { backend: undefined, reason: (failed && noAnswer ? `balancer failed: ${failed.message}` : c.reason).slice(0, 1000) };
  }

  /** PICK decisions so far by "strategy result" (`qhcp_picks_total`): the balancer that chose, or "none". */
  readonly pickCounts = new Map<string, number>();

  private countPick(strategy: string, result: 'picked' | 'none_up' | 'no_answer' | 'error'): void {
    const k = `${strategy} ${result}`;
    this.pickCounts.set(k, (this.pickCounts.get(k) ?? 0) + 1);
  }

  /** Whether panic mode is engaged for `service`'s backends (or the whole pool). */
  panic(service?: string): boolean {
    return this.balance.panic(service);
  }

  /** PICK's answer. */
  pickAnswer(key?: string, service?: string): PickAnswer {
    const c = this.choose(key, service);
    return c.backend ? { server: c.backend.address, balancer: c.balancer, why: c.why } : { server: null, reason: c.reason };
  }

  /** TERMINATE to every backend (bounded wait), close the query port, alert, stop hooks. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.statusTimer);
    this.syncer?.stop();
    this.query.halt();
    const all = this.records();
    await this.cluster?.stop();
    this.checker.halt(all);
    await Promise.all(all.map((b) => this.checker.end(b, 'load balancer stopping')));
    await this.query.stop();
    await this.checker.socket?.close();
    // No pool rebuild (and panic alert) left waiting to run after the `stopped` alert (pool.ts bursts).
    this.balance.reset();
    await this.hooks.alert.promise({ kind: 'stopped', node: this.node, at: Date.now(), servers: all.map((b) => b.address) }).catch(() => {});
    await this.hooks.stop.promise(this);
    this.logger.info('load balancer stopped');
  }
}
