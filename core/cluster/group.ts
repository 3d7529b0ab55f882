/**
 * One load balancer's part in a group sharing one Redis (`--cluster redis://...`,
 * docs/operations.md "Load balancer groups"):
 * - membership: a heartbeat key with a TTL, refreshed and read every `pollMs`; a new epoch on
 *   every join (core/cluster/store.ts);
 * - assignment: rendezvous hashing over the live members gives each backend R checkers
 *   (core/cluster/assign.ts); this member checks its share with its own Checker on private
 *   records ("shadows"), and hands a backend over only once its new checker has published a
 *   result (or after a grace), so a join or a leave leaves no gap;
 * - sharing: the shadows' results are published in batches (fenced by the epoch) and every
 *   member's results land in the load balancer's own records through the decision rule
 *   (core/cluster/decide.ts), so status, the web page, metrics, PICK and sync plugins see
 *   every backend, with the members that checked it (`checkedBy`);
 * - fallback: Redis unreachable, every member checks every backend itself and decides alone
 *   (logged once per outage, `qhcp_cluster_fallback` 1); when Redis answers again it rejoins
 *   with a new epoch and hands the backends back.
 */
import type { QhcpConfig } from '../config/config.ts';
import { checkTimeoutOf } from '../config/config.ts';
import type { Hooks } from '../plugin/hooks.ts';
import type { Message } from '../protocol/messages.ts';
import type { Session } from '../protocol/session.ts';
import type { ClientSocket } from '../transport/quic.ts';
import { readPem } from '../transport/tls.ts';
import type { Logger } from '../util/log.ts';
import { sanitize } from '../util/sanitize.ts';
import { errorText } from '../errors.ts';
import { withTimeout } from '../util/timeout.ts';
import { Backend } from '../health/backend.ts';
import { Checker, timingsOf, type CheckStats, type CheckTimings } from '../health/checker.ts';
import { ruleFor, reasonOf, type HealthEvent, type HealthState } from '../health/states.ts';
import { owners } from './assign.ts';
import { decide, withAdmin } from './decide.ts';
import { clusterOptions, type ClusterOptions, type ClusterSetting } from './options.ts';
import { ClusterStore, type Batch, type SharedResult } from './store.ts';

/** What the group needs from its load balancer. */
export interface ClusterHost {
  readonly config: Readonly<QhcpConfig>;
  readonly hooks: Hooks;
  readonly logger: Logger;
  readonly node: string;
  readonly stats: CheckStats;
  frameObserver(): ((dir: 'in' | 'out', msg: Message, s: Session) => void) | undefined;
  /** The load balancer's records (the view every member shows), in configuration order. */
  records(): readonly Backend[];
  /** Moves a record to `to` with the transition's hooks, alerts and status line. */
  moveTo(b: Backend, to: HealthState, reason: string): void;
  /** A record's metrics, verdict or weight changed from the group's results: balancers re-read it. */
  refreshed(b: Backend): void;
}

/** What metrics and status show of the group. */
export interface ClusterInfo {
  id: string;
  epoch: number;
  /** shared: checking our share; fallback: Redis unreachable, checking everything; starting. */
  mode: 'starting' | 'shared' | 'fallback';
  members: string[];
  replicas: number;
  /** Backends this member checks now. */
  checking: number;
  /** Times this member fell back to checking everything. */
  fallbacks: number;
  /** Our writes refused by the epoch fence. */
  fenced: number;
  /** Redis commands this member sent. */
  commands: number;
}

interface Remote {
  r: SharedResult;
  e: number;
  /** Our clock when it arrived. */
  seen: number;
}

interface Shadow {
  rec: Backend;
  /** No longer ours: checked until the new checkers have published, at most until this time. */
  releaseAt?: number;
}

type Candidate = SharedResult & { m: string };

export class ClusterNode {
  readonly opts: ClusterOptions;
  readonly id: string;
  epoch = 0;
  mode: ClusterInfo['mode'] = 'starting';
  fallbacks = 0;
  private members = new Map<string, number>();
  private readonly shadows = new Map<string, Shadow>();
  private readonly remote = new Map<string, Map<string, Remote>>();
  /** The group's state of each backend before this member's admin state (decide.ts). */
  private readonly base = new Map<string, HealthState>();
  private dirty = new Set<string>();
  private gone = new Set<string>();
  private touched = new Set<string>();
  private touchPending = false;
  private readonly store: ClusterStore;
  private readonly checker: Checker;
  private assignment = new Map<string, string[]>();
  /** The addresses in the load balancer's pool (as of the last assignment). */
  private pool = new Set<string>();
  private assignedFor = '';
  private pollTimer: NodeJS.Timeout | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private ticking = false;
  private flushing = false;
  private rejoin = false;
  private first = true;
  private lastRefresh = 0;
  private stopped = false;
  /** When a Redis command last succeeded (our clock). */
  private lastOk = 0;

  constructor(
    private readonly host: ClusterHost,
    setting: ClusterSetting,
    timings: CheckTimings,
  ) {
    this.opts = clusterOptions(setting);
    this.id = host.node;
    const lb = host;
    const limits = () => ({ fall: lb.config.maxFailAttempts, rise: lb.config.riseAttempts });
    const ca = host.config.caFile ? readPem(host.config.caFile, 'certificate') : undefined;
    // The shadows' checker: the same code as the load balancer's own, its events moving the
    // shadow along the same states table, then shared.
    this.checker = new Checker(
      {
        get config() {
          return lb.config;
        },
        hooks: lb.hooks,
        logger: lb.logger,
        node: lb.node,
        frameObserver: () => lb.frameObserver(),
        health: (b: Backend, event: HealthEvent, detail?: string) => {
          const rule = ruleFor(b.state, event, b, limits());
          if (rule && rule.to !== b.state) {
            b.state = rule.to;
            b.since = Date.now();
            b.reason = sanitize(reasonOf(rule, b, detail), 1000);
          }
          this.touch(b.address, true);
        },
      },
      timings,
      host.stats,
      ca,
    );
    this.store = new ClusterStore(this.opts, host.logger, (b) => this.onBatch(b));
  }

  private get intervalMs(): number {
    return this.checker.timings.intervalMs;
  }
  /** How often the heartbeat is refreshed and the members read: a tenth of the TTL, 50-250 ms. */
  get pollMs(): number {
    return Math.max(50, Math.min(250, Math.round(this.opts.ttlMs / 10)));
  }
  private get flushMs(): number {
    return Math.max(20, Math.min(100, Math.round(this.intervalMs / 4)));
  }
  /** A remote result counts this long after it arrived (results are published at least every interval). */
  private get freshMs(): number {
    return 3 * this.intervalMs + this.checker.timings.timeoutMs + this.pollMs;
  }

  info(): ClusterInfo {
    return {
      id: this.id,
      epoch: this.epoch,
      mode: this.mode,
      members: this.mode === 'shared' ? [...this.members.keys()].sort() : [this.id],
      replicas: this.opts.replicas,
      checking: [...this.shadows.values()].filter((s) => s.releaseAt === undefined).length,
      fallbacks: this.fallbacks,
      fenced: this.store.fenced,
      commands: this.store.commands,
    };
  }

  /** The timings changed (SIGHUP): the shadows follow from their next check. */
  retime(t: CheckTimings): void {
    this.checker.timings = t;
  }

  /** Starts the group; its checks leave through `socket`, the load balancer's one client socket. */
  async start(socket: ClientSocket | undefined): Promise<void> {
    this.checker.socket = socket;
    const reachable = await this.store.connect();
    if (!reachable) this.fallBack(new Error(`cannot connect to ${this.store.where}`));
    await this.tick();
    this.pollTimer = setInterval(() => void this.tick(), this.pollMs);
    this.flushTimer = setInterval(() => void this.flush(), this.flushMs);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.pollTimer);
    clearInterval(this.flushTimer);
    const all = [...this.shadows.values()].map((s) => s.rec);
    this.checker.halt(all);
    if (this.mode === 'shared') await this.store.leave(this.id, this.epoch);
    await Promise.all(all.map((b) => this.checker.end(b, 'load balancer stopping')));
    await this.store.close();
  }

  /** A backend was added to (or removed from) the pool: assign it now rather than at the next tick. */
  changed(): void {
    if (!this.stopped) this.reassign();
  }

  /** An operator changed this member's admin state for `b`: show it on top of the group's state. */
  operator(b: Backend, detail?: string): void {
    this.apply(b, detail ?? 'set by the operator');
  }

  /** Membership, (re)join, fallback, assignment; every `pollMs`. */
  private async tick(): Promise<void> {
    if (this.ticking || this.stopped) return;
    this.ticking = true;
    try {
      // Bounded: a tick that hangs (a command lost on a reconnect) must not stop the next ones.
      await withTimeout(() => this.membership(), this.opts.ttlMs, () => new Error(`Redis did not answer within ${this.opts.ttlMs} ms`));
      this.lastOk = Date.now();
    } catch (e) {
      this.failed(e);
    } finally {
      this.ticking = false;
    }
    if (this.stopped) return;
    const now = Date.now();
    if (now - this.lastRefresh >= this.intervalMs) {
      // Every interval every result of ours goes out again, so the others know it is current.
      this.lastRefresh = now;
      for (const [a, s] of this.shadows) if (s.releaseAt === undefined) this.dirty.add(a);
    }
    this.reassign();
    for (const b of this.host.records()) this.apply(b);
  }

  private async membership(): Promise<void> {
    if (this.mode !== 'shared' || this.rejoin) return this.join();
    const { ours, members } = await this.store.beat(this.id, this.epoch);
    if (ours) return this.setMembers(members);
    this.host.logger.limited('cluster:fenced', 'cluster: our heartbeat expired or another process took our id; joining again with a new epoch (two load balancers with one node name? give each its own --node)', { id: this.id, epoch: this.epoch });
    await this.join();
  }

  /** Joins with a new epoch, reads the live members' results, checks our share. */
  private async join(): Promise<void> {
    const was = this.mode;
    this.pool = new Set(this.host.records().map((b) => b.address));
    this.epoch = await this.store.join(this.id);
    const { members } = await this.store.beat(this.id, this.epoch);
    members.set(this.id, this.epoch);
    this.setMembers(members);
    for (const [m, e] of members) {
      if (m === this.id) continue;
      const seen = Date.now();
      for (const r of await this.store.results(m)) this.putRemote(m, e, r, seen);
    }
    this.mode = 'shared';
    this.rejoin = false;
    this.host.logger.debug('cluster: joined', { epoch: this.epoch, members: [...members.keys()].join(',') });
    for (const [a, s] of this.shadows) if (s.releaseAt === undefined) this.dirty.add(a);
    if (was === 'fallback') this.host.logger.warn('cluster: Redis reachable again; rejoined the group, checking our share', { redis: this.store.where, epoch: this.epoch, members: members.size });
    else if (was === 'starting') this.host.logger.info('cluster: joined the group', { redis: this.store.where, group: this.opts.group, id: this.id, epoch: this.epoch, members: members.size, replicas: this.opts.replicas });
  }

  private setMembers(members: Map<string, number>): void {
    if (!members.has(this.id)) members.set(this.id, this.epoch);
    this.members = members;
    // Results of members gone, or of an older epoch of a member, no longer count.
    for (const [addr, by] of this.remote) {
      for (const [m, x] of by) if (members.get(m) !== x.e) by.delete(m);
      if (by.size === 0) this.remote.delete(addr);
    }
  }

  /**
   * A Redis command failed. A slow or lost command is not an outage: the group falls back only
   * when Redis has not answered for a heartbeat TTL (by then the others count us gone anyway);
   * until then our share is checked as before and the others' results age out as usual.
   */
  private failed(e: unknown): void {
    if (this.mode === 'shared' && Date.now() - this.lastOk < this.opts.ttlMs) {
      this.host.logger.limited('cluster:redis', 'cluster: a Redis command failed; retrying', { error: errorText(e) });
      return;
    }
    this.fallBack(e);
  }

  /** Redis failed: check everything here (logged once per outage). */
  private fallBack(e: unknown): void {
    if (this.stopped) return;
    if (this.mode !== 'fallback') {
      this.fallbacks++;
      this.host.logger.warn('cluster: Redis unreachable; checking every backend here until it is back', { redis: this.store.where, error: errorText(e) });
    }
    this.mode = 'fallback';
    this.members = new Map([[this.id, this.epoch]]);
    this.remote.clear();
    this.dirty.clear();
    this.gone.clear();
    this.reassign();
  }

  /** Starts checking what is ours, hands over what is not (once covered), drops what is gone. */
  private reassign(): void {
    const records = this.host.records();
    const shared = this.mode === 'shared';
    const live = shared ? [...this.members.keys()].sort() : [this.id];
    const sig = `${this.mode}|${live.join('\n')}`;
    if (sig !== this.assignedFor) {
      this.assignment.clear();
      this.assignedFor = sig;
    }
    const now = Date.now();
    const spread = Math.min(this.intervalMs, 1000);
    const present = new Set<string>();
    for (const b of records) {
      present.add(b.address);
      let who = this.assignment.get(b.address);
      if (!who) this.assignment.set(b.address, (who = shared ? owners(b.address, live, this.opts.replicas) : [this.id]));
      const s = this.shadows.get(b.address);
      if (who.includes(this.id)) {
        if (!s) {
          const rec = new Backend(b.address, b.host, b.port, b.configWeight, b.service);
          this.shadows.set(b.address, { rec });
          // At start the first round is spread over an interval; a take-over starts at once.
          this.checker.begin(rec, Math.random() * (this.first ? spread : spread / 10));
        } else s.releaseAt = undefined;
      } else if (s) {
        s.releaseAt ??= now + this.freshMs;
        if (now >= s.releaseAt || this.covered(b.address, who)) this.release(b.address, s);
      }
    }
    this.first = false;
    this.pool = present;
    for (const [a, s] of this.shadows) if (!present.has(a)) this.release(a, s);
  }

  /** Another of `who` has published a result for `addr` that counts. */
  private covered(addr: string, who: readonly string[]): boolean {
    const by = this.remote.get(addr);
    if (!by) return false;
    const now = Date.now();
    return who.some((m) => {
      const x = m !== this.id ? by.get(m) : undefined;
      return x !== undefined && x.r.state !== 'UNKNOWN' && now - x.seen <= this.freshMs;
    });
  }

  private release(addr: string, s: Shadow): void {
    this.shadows.delete(addr);
    this.dirty.delete(addr);
    if (this.mode === 'shared') this.gone.add(addr);
    void this.checker.end(s.rec, 'checked by other members of the group now');
    this.touch(addr, false);
  }

  /** A shadow moved or was checked: publish it, and update the view on the next tick. */
  private touch(addr: string, publish: boolean): void {
    if (publish && this.mode === 'shared') this.dirty.add(addr);
    this.touched.add(addr);
    if (this.touchPending) return;
    this.touchPending = true;
    setImmediate(() => {
      this.touchPending = false;
      const list = this.touched;
      this.touched = new Set();
      if (this.stopped) return;
      for (const b of this.host.records()) if (list.has(b.address)) this.apply(b);
    });
  }

  private onBatch(batch: Batch): void {
    if (this.stopped || this.mode !== 'shared' || batch.m === this.id) return;
    const e = this.members.get(batch.m);
    // A member we do not know yet (it just joined) or of another epoch: read at the next tick.
    if (e !== batch.e) return;
    const seen = Date.now();
    for (const a of batch.gone) {
      this.remote.get(a)?.delete(batch.m);
      this.touched.add(a);
    }
    for (const r of batch.r) this.putRemote(batch.m, batch.e, r, seen);
    this.touch('', false);
  }

  private putRemote(m: string, e: number, r: SharedResult, seen: number): void {
    if (!this.pool.has(r.b)) return; // not in our pool
    let by = this.remote.get(r.b);
    if (!by) this.remote.set(r.b, (by = new Map()));
    by.set(m, { r, e, seen });
    this.touched.add(r.b);
  }

  /** The results that count for `addr` now: our shadow's and the live members' fresh ones. */
  private candidates(addr: string): Candidate[] {
    const out: Candidate[] = [];
    const s = this.shadows.get(addr);
    if (s && s.rec.state !== 'UNKNOWN') out.push({ ...resultOf(s.rec), m: this.id });
    if (this.mode !== 'shared') return out;
    const now = Date.now();
    for (const [m, x] of this.remote.get(addr) ?? []) {
      if (m === this.id || this.members.get(m) !== x.e || now - x.seen > this.freshMs || x.r.state === 'UNKNOWN') continue;
      out.push({ ...x.r, m });
    }
    return out;
  }

  /** Writes the group's view of `b` into the load balancer's record (decide.ts). */
  private apply(b: Backend, operatorDetail?: string): void {
    const cands = this.candidates(b.address);
    const win = decide(cands);
    b.checkedBy = cands.map((c) => c.m).sort();
    if (win) {
      b.metrics = win.metrics;
      b.reportedAt = win.reportedAt;
      b.ageMs = win.ageMs;
      b.latencyMs = win.latencyMs;
      b.verdict = win.verdict;
      b.agentAdmin = win.agentAdmin;
      b.agentWeight = win.agentWeight;
      b.lastError = win.lastError;
      b.failures = win.failures;
      b.successes = win.successes;
      b.checks = Math.max(b.checks, cands.reduce((n, c) => n + c.checks, 0));
      // The agent's name from whichever member knows it (the metrics' `name` label on members that do not check it).
      b.name = win.name ?? cands.find((c) => c.name)?.name ?? b.name;
      if (win.reportedAt !== null) b.everChecked = true;
      this.base.set(b.address, win.state);
      this.host.refreshed(b);
    }
    const group = this.base.get(b.address) ?? 'UNKNOWN';
    const to = withAdmin(group, b.adminState);
    if (to === b.state) return;
    const why = to !== group ? `${to === 'MAINT' ? 'maintenance' : 'draining'}: ${operatorDetail ?? 'set by the operator'}` : `${win?.reason ?? to}${win ? ` (checked by ${win.m})` : ''}`;
    this.host.moveTo(b, to, why);
  }

  /** Publishes what changed (a batch per flush, one Redis command). */
  private async flush(): Promise<void> {
    if (this.flushing || this.stopped || this.mode !== 'shared' || this.rejoin) return;
    if (this.dirty.size === 0 && this.gone.size === 0) return;
    const dirty = this.dirty;
    const gone = this.gone;
    this.dirty = new Set();
    this.gone = new Set();
    const results: SharedResult[] = [];
    for (const a of dirty) {
      const s = this.shadows.get(a);
      if (s) results.push(resultOf(s.rec));
    }
    this.flushing = true;
    try {
      const ok = await withTimeout(this.store.publish(this.id, this.epoch, results, [...gone]), this.opts.ttlMs, () => new Error(`Redis did not answer within ${this.opts.ttlMs} ms`));
      this.lastOk = Date.now();
      if (!ok) {
        this.host.logger.limited('cluster:fenced', 'cluster: results refused by the epoch fence (our heartbeat expired or our id was taken); joining again', { id: this.id, epoch: this.epoch });
        this.rejoin = true;
      }
    } catch (e) {
      // Lost with the batch: what changed goes out again (results are republished every interval anyway).
      for (const a of gone) this.gone.add(a);
      this.failed(e);
    } finally {
      this.flushing = false;
    }
  }
}

/** A shadow's state as shared. */
export function resultOf(b: Backend): SharedResult {
  const name = b.name ?? b.session?.peer?.node;
  return {
    b: b.address,
    state: b.state,
    since: b.since,
    verdict: b.verdict,
    agentAdmin: b.agentAdmin,
    agentWeight: b.agentWeight,
    metrics: b.metrics,
    reportedAt: b.reportedAt,
    ageMs: b.ageMs,
    latencyMs: b.latencyMs,
    reason: b.reason,
    lastError: b.lastError,
    failures: b.failures,
    successes: b.successes,
    checks: b.checks,
    ...(name ? { name } : {}),
    at: Date.now(),
  };
}

/** The group for a load balancer, when its config has `cluster`. */
export function clusterFor(host: ClusterHost): ClusterNode | undefined {
  const c = host.config as Readonly<QhcpConfig> & { cluster?: ClusterSetting };
  if (!c.cluster) return undefined;
  return new ClusterNode(host, c.cluster, timingsOf(host.config, checkTimeoutOf(host.config)));
}
