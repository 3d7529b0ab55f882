/**
 * The load balancer's Prometheus exposition (docs/operations.md, "Metrics"), built on
 * prom-client. Counters and the check-duration histogram are fed by the `checked`,
 * `transition` and `pick` hooks; gauges (state, weight, verdict, report age, the agents'
 * metrics, ...) are read from the live backend records at scrape time, so a scrape never
 * shows a backend that is gone and never costs a check anything.
 */
import { Registry, Counter, Gauge, Histogram } from 'prom-client';
import type { BackendView, CheckResult, Transition } from '../plugin/hooks.ts';
import type { DriverStats } from '../transport/driver.ts';

/** Health states a backend can be in (label values of qhcp_backend_status). */
export const STATES = ['UNKNOWN', 'UP', 'DEGRADED', 'DRAINING', 'MAINT', 'DOWN'] as const;
export const VERDICTS = ['SERVING', 'DEGRADED', 'NOT_SERVING'] as const;
export const ADMIN_STATES = ['READY', 'DRAIN', 'MAINT'] as const;

/** Distinct failure reasons kept per backend; further ones count as "OTHER" (bounded label sets). */
const MAX_REASONS = 16;

/** What the exposition reads from a backend: BackendView, and the agent's node name when known. */
export interface ObservedBackend extends BackendView {
  /** The agent's node name (from its ACK), when known. */
  readonly name?: string;
  readonly session?: { peer?: { node?: string } } | undefined;
  /** In a load balancer group: the members whose results decided the state. */
  readonly checkedBy?: readonly string[] | undefined;
}

/** What the exposition reads from the load balancer. */
export interface ObservedLb {
  readonly node: string;
  readonly hooks: import('../plugin/hooks.ts').Hooks;
  readonly pluginFailures: ReadonlyMap<string, number>;
  readonly plugins: ReadonlyArray<{ name: string; family?: string }>;
  readonly stats: { picks: number; queries: number; checks: number; lateChecks: number; postponedSteps: number };
  /** PICK decisions so far, keyed "strategy result" (strategy: the balancer that chose, or "none"). */
  readonly pickCounts: ReadonlyMap<string, number>;
  /** The backends now (array or the lbsplit accessor). */
  currentBackends(): readonly ObservedBackend[];
  /** Query-port connections open now and accepted so far, when the role tells. */
  queryConnections?(): { open: number; accepted: number; limited?: number; watching?: number; resyncs?: number };
  /** The load balancer group, when the load balancer is in one (core/cluster/). */
  clusterInfo?(): import('../cluster/group.ts').ClusterInfo | undefined;
  /** The QUIC driver's counters per socket ("check": the agents' connections, "query": the query port). */
  transportStats?(): Readonly<Record<string, Readonly<DriverStats> | undefined>>;
}

/** `datagramsIn` -> `datagrams_in` (the `event` label of qhcp_transport_events_total). */
const snake = (k: string): string => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** A Prometheus label value for a metric name an agent sent: [a-zA-Z0-9_] only, at most 100 chars. */
export function metricLabel(name: string): string {
  return name.replace(/[^A-Za-z0-9_]/g, '_').slice(0, 100);
}

/**
 * The failure class of a check's error text, for a bounded `reason` label:
 * "RESPONSE_TIMEOUT: no HEALTH_RESPONSE ..." -> RESPONSE_TIMEOUT; "cannot connect ..." -> CONNECT.
 */
export function failureReason(error: string | null): string {
  if (!error) return 'UNKNOWN';
  const code = /^(?:QHCP_ERR_)?([A-Z][A-Z0-9_]{2,47})\b/.exec(error)?.[1];
  if (code) return code;
  if (/connect/i.test(error)) return 'CONNECT';
  if (/closed/i.test(error)) return 'CLOSED';
  return 'OTHER';
}

export function nameOf(b: ObservedBackend): string {
  return b.name ?? b.session?.peer?.node ?? '';
}

type Labels = { backend: string; service: string; name: string } & Record<string, string>;

/** Builds the registry for one load balancer and taps its hooks. */
export class LbMetrics {
  readonly registry = new Registry();
  private readonly labels = new Map<string, Labels>();
  private readonly reasons = new Map<string, Set<string>>();
  private readonly names = new Map<string, string>();
  private readonly checks: Counter<'backend' | 'service' | 'name' | 'result'>;
  private readonly failures: Counter<'backend' | 'service' | 'name' | 'reason'>;
  private readonly transitions: Counter<'backend' | 'service' | 'name' | 'from' | 'to'>;
  private readonly duration: Histogram<'backend' | 'service' | 'name'>;
  private readonly picks: Counter<'strategy' | 'result'>;
  private readonly pluginErrors: Counter<'plugin'>;
  private pluginSeen = new Map<string, number>();
  private readonly picksSeen = new Map<string, number>();

  constructor(private readonly lb: ObservedLb) {
    // PICKs before the listener existed are not counted by strategy (nor as unrouted).
    const r = this.registry;
    const per = ['backend', 'service', 'name'] as const;
    const self = this;
    r.setDefaultLabels({});
    new Gauge({
      name: 'qhcp_info',
      help: 'This load balancer (value 1), with its node name.',
      labelNames: ['node', 'role'],
      registers: [r],
      collect() {
        // First in the registry: drop the series of backends that are gone before any is written.
        self.current();
        this.set({ node: lb.node, role: 'loadbalancer' }, 1);
      },
    });
    this.checks = new Counter({ name: 'qhcp_backend_checks_total', help: 'Health checks (polls and push reports) of a backend, by result (ok, failed).', labelNames: [...per, 'result'], registers: [r] });
    this.failures = new Counter({ name: 'qhcp_backend_check_failures_total', help: 'Failed health checks of a backend, by reason class (the error code of the failure).', labelNames: [...per, 'reason'], registers: [r] });
    this.transitions = new Counter({ name: 'qhcp_backend_transitions_total', help: 'Health state changes of a backend, by from and to state.', labelNames: [...per, 'from', 'to'], registers: [r] });
    this.duration = new Histogram({
      name: 'qhcp_backend_check_duration_seconds',
      help: 'Round-trip time of a good health check (HEALTH_REQUEST to HEALTH_RESPONSE), in seconds.',
      labelNames: [...per],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [r],
    });
    this.picks = new Counter({
      name: 'qhcp_picks_total',
      help: 'PICK decisions, by strategy (the balancer plugin that answered, or "none") and result (picked, none_up, no_answer).',
      labelNames: ['strategy', 'result'],
      registers: [r],
      collect() {
        // Counted where the load balancer decides (LoadBalancer.choose), whichever path picked.
        for (const [k, n] of lb.pickCounts) {
          const seen = self.picksSeen.get(k) ?? 0;
          if (n <= seen) continue;
          const [strategy, result] = k.split(' ') as [string, string];
          this.inc({ strategy, result }, n - seen);
          self.picksSeen.set(k, n);
        }
      },
    });
    this.pluginErrors = new Counter({
      name: 'qhcp_plugin_errors_total',
      help: 'Plugin taps that threw, rejected or timed out (contained by the core), by plugin.',
      labelNames: ['plugin'],
      registers: [r],
      collect() {
        for (const [plugin, n] of lb.pluginFailures) {
          const d = n - (self.pluginSeen.get(plugin) ?? 0);
          if (d > 0) this.inc({ plugin }, d);
          self.pluginSeen.set(plugin, n);
        }
      },
    });
    new Counter({
      name: 'qhcp_transport_events_total',
      help: 'What the QUIC driver did, per socket (check: the connections to agents; query: the query port) and event: datagrams in and out, dropped, retries, version negotiations, refused tokens and handshakes, refused migrations, stateless resets, send stalls and errors, drain caps, ports found unreachable, receive-moderation holds and holds skipped for a backlog, PINGs for overdue answers and reports (nudges), acknowledgements deferred, PINGs echoed.',
      labelNames: ['socket', 'event'],
      registers: [r],
      collect() {
        this.reset();
        for (const [socket, stats] of Object.entries(lb.transportStats?.() ?? {})) {
          if (!stats) continue;
          for (const [k, n] of Object.entries(stats)) this.inc({ socket, event: snake(k) }, n);
        }
      },
    });
    new Counter({ name: 'qhcp_queries_total', help: 'STATUS and PICK queries answered on the query port.', registers: [r], collect() { this.reset(); this.inc(lb.stats.queries); } });
    new Counter({ name: 'qhcp_late_checks_total', help: 'Checks that started more than 10% of an interval after they were due.', registers: [r], collect() { this.reset(); this.inc(lb.stats.lateChecks); } });
    new Counter({ name: 'qhcp_postponed_steps_total', help: 'Probes, nudges and report or answer timeouts that waited for the check socket to be read past their deadline (the load balancer was behind on its own reading).', registers: [r], collect() { this.reset(); this.inc(lb.stats.postponedSteps); } });
    new Gauge({
      name: 'qhcp_query_connections',
      help: 'Query-port (STATUS/PICK) connections open now.',
      registers: [r],
      collect() {
        this.set(lb.queryConnections?.().open ?? 0);
      },
    });
    new Counter({
      name: 'qhcp_query_connections_total',
      help: 'Query-port connections accepted since start.',
      registers: [r],
      collect() {
        this.reset();
        this.inc(lb.queryConnections?.().accepted ?? 0);
      },
    });
    new Gauge({
      name: 'qhcp_watchers',
      help: 'Query-port sessions streaming the view (WATCH) now.',
      registers: [r],
      collect() {
        this.set(lb.queryConnections?.().watching ?? 0);
      },
    });
    new Counter({
      name: 'qhcp_watch_resyncs_total',
      help: 'Full views sent to WATCH clients that read too slowly (their waiting changes dropped).',
      registers: [r],
      collect() {
        this.reset();
        this.inc(lb.queryConnections?.().resyncs ?? 0);
      },
    });
    new Counter({
      name: 'qhcp_queries_limited_total',
      help: 'STATUS/PICK queries refused by the query rate limits (per connection or in total).',
      registers: [r],
      collect() {
        this.reset();
        this.inc(lb.queryConnections?.().limited ?? 0);
      },
    });
    if (lb.clusterInfo?.()) clusterMetrics(r, () => lb.clusterInfo?.());
    new Gauge({
      name: 'qhcp_backends',
      help: 'Backends by health state.',
      labelNames: ['state'],
      registers: [r],
      collect() {
        const n = new Map<string, number>(STATES.map((s) => [s, 0]));
        for (const b of lb.currentBackends()) n.set(b.state, (n.get(b.state) ?? 0) + 1);
        for (const [state, v] of n) this.set({ state }, v);
      },
    });
    const gauge = (name: string, help: string, extra: string[], fill: (g: Gauge<string>, b: ObservedBackend, l: Labels, now: number) => void) =>
      new Gauge({
        name,
        help,
        labelNames: [...per, ...extra],
        registers: [r],
        collect() {
          this.reset();
          const now = Date.now();
          for (const b of self.current()) fill(this, b, self.labelsOf(b), now);
        },
      });
    gauge('qhcp_backend_status', 'Health state of a backend: 1 for the state it is in, 0 for the others.', ['state'], (g, b, l) => {
      for (const state of STATES) g.set({ ...l, state }, b.state === state ? 1 : 0);
    });
    gauge('qhcp_backend_last_change_timestamp_seconds', 'When the backend entered its current state (Unix time, seconds).', [], (g, b, l) => {
      if (b.since !== undefined) g.set(l, b.since / 1000);
    });
    gauge('qhcp_backend_verdict', "The agent's own verdict: 1 for the verdict it reported, 0 for the others (none before its first report).", ['verdict'], (g, b, l) => {
      if (!b.verdict) return;
      for (const verdict of VERDICTS) g.set({ ...l, verdict }, b.verdict === verdict ? 1 : 0);
    });
    gauge('qhcp_backend_admin_state', "The load balancer's own admin state of the backend (set by operators): 1 for the current one.", ['state'], (g, b, l) => {
      if (!b.adminState) return;
      for (const state of ADMIN_STATES) g.set({ ...l, state }, b.adminState === state ? 1 : 0);
    });
    gauge('qhcp_backend_weight', 'Effective weight of the backend (balancers read it).', [], (g, b, l) => g.set(l, b.weight));
    gauge('qhcp_backend_consecutive_failures', 'Failed checks in a row (DOWN after maxFailAttempts).', [], (g, b, l) => g.set(l, b.failures ?? 0));
    gauge('qhcp_backend_consecutive_successes', 'Good checks in a row (UP again after riseAttempts).', [], (g, b, l) => g.set(l, b.successes ?? 0));
    gauge('qhcp_backend_report_age_seconds', "Age of the backend's last good report: time since it arrived plus how old its sample already was.", [], (g, b, l, now) => {
      if (b.reportedAt !== null) g.set(l, (now - b.reportedAt + (b.ageMs ?? 0)) / 1000);
    });
    gauge('qhcp_backend_check_latency_seconds', 'Round-trip time of the last good check, in seconds.', [], (g, b, l) => {
      if (b.latencyMs !== null) g.set(l, b.latencyMs / 1000);
    });
    gauge('qhcp_backend_metric', 'A metric the agent reported (name sanitised to [A-Za-z0-9_]), as last received.', ['metric'], (g, b, l) => {
      for (const [k, v] of Object.entries(b.metrics)) if (Number.isFinite(v)) g.set({ ...l, metric: metricLabel(k) }, v);
    });

    lb.hooks.checked.tap('http-metrics', (b, res) => this.onChecked(b as ObservedBackend, res));
    lb.hooks.transition.tap('http-metrics', (t) => this.onTransition(t));
  }

  /** The backends now; label sets of backends that went away are dropped from the counters. */
  private current(): readonly ObservedBackend[] {
    const list = this.lb.currentBackends();
    if (list.length !== this.labels.size || list.some((b) => !this.labels.has(b.address))) {
      const live = new Set(list.map((b) => b.address));
      for (const [address, l] of this.labels) {
        if (live.has(address)) continue;
        for (const m of [this.checks, this.failures, this.transitions, this.duration] as Array<{ remove(l: Record<string, string>): void; hashMap?: unknown }>) removeMatching(m, l);
        this.labels.delete(address);
        this.reasons.delete(address);
      }
    }
    return list;
  }

  private labelsOf(b: ObservedBackend): Labels {
    let l = this.labels.get(b.address);
    const name = nameOf(b) || this.names.get(b.address) || '';
    if (name) this.names.set(b.address, name);
    if (!l || l.name !== name || l.service !== (b.service ?? '')) {
      l = { backend: b.address, service: b.service ?? '', name };
      this.labels.set(b.address, l);
    }
    return l;
  }

  onChecked(b: ObservedBackend, res: CheckResult): void {
    const l = this.labelsOf(b);
    this.checks.inc({ ...l, result: res.ok ? 'ok' : 'failed' });
    if (res.ok) {
      if (res.latencyMs !== null) this.duration.observe(l, res.latencyMs / 1000);
      return;
    }
    let reason = failureReason(res.error);
    let seen = this.reasons.get(b.address);
    if (!seen) this.reasons.set(b.address, (seen = new Set()));
    if (!seen.has(reason)) {
      if (seen.size >= MAX_REASONS) reason = 'OTHER';
      else seen.add(reason);
    }
    this.failures.inc({ ...l, reason });
  }

  onTransition(t: Transition): void {
    const l = this.labels.get(t.server) ?? { backend: t.server, service: '', name: this.names.get(t.server) ?? '' };
    this.transitions.inc({ ...l, from: t.from, to: t.to });
  }

  /** The exposition text (text/plain; version=0.0.4). */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/** Removes every label set of `metric` whose backend label is `l.backend` (any reason/from/to). */
function removeMatching(metric: unknown, l: Labels): void {
  const m = metric as { hashMap?: Record<string, { labels: Record<string, string> }>; remove(labels: Record<string, string>): void };
  for (const entry of Object.values(m.hashMap ?? {})) if (entry.labels.backend === l.backend) m.remove(entry.labels);
}

/** The load balancer group's series (only on a member of one). */
function clusterMetrics(r: Registry, info: () => import('../cluster/group.ts').ClusterInfo | undefined): void {
  const g = (name: string, help: string, read: (i: import('../cluster/group.ts').ClusterInfo) => number) =>
    new Gauge({ name, help, registers: [r], collect() { const i = info(); if (i) this.set(read(i)); } });
  const c = (name: string, help: string, read: (i: import('../cluster/group.ts').ClusterInfo) => number) =>
    new Counter({ name, help, registers: [r], collect() { const i = info(); if (i) { this.reset(); this.inc(read(i)); } } });
  g('qhcp_cluster_members', 'Live members of the load balancer group, this one included (1 in fallback).', (i) => i.members.length);
  g('qhcp_cluster_fallback', '1 while Redis is unreachable and this member checks every backend itself, else 0.', (i) => (i.mode === 'fallback' ? 1 : 0));
  g('qhcp_cluster_checking_backends', 'Backends this member checks itself now (its share; all of them in fallback).', (i) => i.checking);
  g('qhcp_cluster_epoch', "This member's epoch (a new one on every join).", (i) => i.epoch);
  c('qhcp_cluster_fallbacks_total', 'Times this member fell back to checking every backend (Redis unreachable).', (i) => i.fallbacks);
  c('qhcp_cluster_fenced_total', "This member's result batches refused by the epoch fence.", (i) => i.fenced);
  c('qhcp_cluster_redis_commands_total', 'Redis commands this member sent.', (i) => i.commands);
}
