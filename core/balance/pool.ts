/**
 * The load balancer's side of LocalBalancer: one LocalBalancer per balancer plugin per pool (the
 * whole pool, and each service a PICK names), kept up to date as the view changes. Balancers are
 * asked in the order their `pick` taps were registered; the first answer wins, one that answers
 * nothing passes to the next (the `pick` hook's Bail contract). The first balancer of each pool
 * reports panic mode: logged and sent to the `alert` hook.
 */
import type { BackendView, Hooks } from '../plugin/hooks.ts';
import type { QhcpPlugin } from '../plugin/loader.ts';
import type { Logger } from '../util/log.ts';
import type { QhcpConfig } from '../config/config.ts';
import type { ServerStatus } from '../protocol/messages.ts';
import { sanitize } from '../util/sanitize.ts';
import { hasPicker } from './picker.ts';
import { LocalBalancer, type PanicChange } from './local.ts';

export interface BalanceHost {
  readonly hooks: Hooks;
  readonly plugins: readonly QhcpPlugin[];
  readonly config: Readonly<QhcpConfig>;
  readonly logger: Logger;
  readonly node: string;
  /** The backends, in configuration order (live records). */
  records(): readonly BackendView[];
}

export type Choice<B extends BackendView> = { backend: B; balancer: string; why: string; reason?: undefined } | { backend: undefined; reason: string };

interface Pool {
  service: string | undefined;
  balancers: LocalBalancer[];
  /** The view version the balancers last saw, and when. */
  seen: number;
  refreshedAt: number;
}

/**
 * How long a pool may pick from reports older than the latest (ms): check results (metrics,
 * report times, the agent's weight) reach the balancers at most this late, so a pool of 10 000
 * backends reporting every second is re-read ten times a second, not once per report.
 */
export const REPORT_COALESCE_MS = 100;
/** Eager refreshes (state and membership changes) at most this often in a burst (ms). */
export const EAGER_GAP_MS = 100;

export class PoolBalancers {
  private readonly pools = new Map<string, Pool>();
  /** Balancer names (tap order) the pools were built for. */
  private names: string[] = [];
  private tapCount = -1;
  private version = 1;
  /** The version a pool must catch up with at its next pick, whatever the time (membership, state, weight). */
  private hardVersion = 1;

  constructor(private readonly host: BalanceHost) {}

  /**
   * The view changed. `eager`: a state or membership change: the pools are updated now (so panic
   * is reported at once). Otherwise a report (metrics): the pools re-read the view at a pick
   * at most REPORT_COALESCE_MS after the previous re-read.
   */
  changed(eager = false): void {
    this.version++;
    if (!eager) return;
    this.hardVersion = this.version;
    // Picks, panic() and decorate() catch up by themselves (hardVersion); the eager refresh is for
    // panic mode to be reported without waiting for a PICK. In a burst (a thousand backends coming
    // UP at start-up) it runs at most once per EAGER_GAP_MS, with one more after the burst: one
    // rebuild per transition was quadratic (1000 backends: ~190 ms of CPU at start-up).
    const now = performance.now();
    if (now - this.eagerAt >= EAGER_GAP_MS) this.refreshAll(now);
    else this.eagerTimer ??= setTimeout(() => this.refreshAll(performance.now()), EAGER_GAP_MS - (now - this.eagerAt)).unref();
  }

  private eagerAt = -Infinity;
  private eagerTimer: NodeJS.Timeout | undefined;

  private refreshAll(now: number): void {
    if (this.eagerTimer) clearTimeout(this.eagerTimer);
    this.eagerTimer = undefined;
    this.eagerAt = now;
    // The whole pool exists from the start, so its panic mode is reported without waiting for a PICK.
    this.syncBalancers();
    if (this.names.length > 0) this.pool(undefined);
    for (const p of this.pools.values()) this.refresh(p);
  }

  /** Forgets every pool (balancing options changed): state starts over from the next pick. */
  reset(): void {
    if (this.eagerTimer) clearTimeout(this.eagerTimer);
    this.eagerTimer = undefined;
    this.pools.clear();
    this.tapCount = -1;
  }

  /** Chooses one backend for `service` (or the whole pool). */
  choose(key: string | undefined, service: string | undefined): Choice<BackendView> {
    this.syncBalancers();
    if (this.names.length === 0) return { backend: undefined, reason: 'no balancer plugin is configured' };
    const pool = this.pool(service);
    if (!pool) return { backend: undefined, reason: `no server names service "${service}"` };
    this.refresh(pool);
    const lead = pool.balancers[0]!;
    if (lead.offered.length === 0) return { backend: undefined, reason: service === undefined ? 'no server is UP' : `no server of service "${service}" is UP` };
    const now = Date.now();
    let miss = 'the balancer chose no server';
    for (const lb of pool.balancers) {
      const r = lb.pick(key, now);
      if (r) return { backend: r.server, balancer: lb.plugin.name, why: sanitize(`${r.why} of ${lb.from}`, 512) };
      miss = lb.lastMiss;
      // A balancer that chose what it was not offered ends the pick (as the hook did).
      if (/not offered/.test(miss)) return { backend: undefined, reason: miss };
    }
    return { backend: undefined, reason: miss };
  }

  /** Whether `service`'s pool (or the whole pool) is in panic mode. */
  panic(service?: string): boolean {
    this.syncBalancers();
    const p = this.names.length > 0 ? this.pool(service) : undefined;
    if (!p) return false;
    this.refresh(p);
    return p.balancers[0]!.panic;
  }

  /** A status entry with the balancing view added: `effectiveWeight` while slow start ramps it, `panic` when its pool is in panic. */
  decorate(s: ServerStatus, service?: string, now = Date.now()): ServerStatus {
    this.syncBalancers();
    const p = this.names.length > 0 ? this.pool(service) : undefined;
    if (!p) return s;
    this.refresh(p);
    const lead = p.balancers[0]!;
    const w = lead.effectiveWeight(s.address, now);
    return { ...s, ...(w !== undefined ? { effectiveWeight: Math.round(w * 1000) / 1000 } : {}), ...(lead.panic ? { panic: true } : {}) };
  }

  private pool(service: string | undefined): Pool | undefined {
    const k = service ?? '';
    let p = this.pools.get(k);
    if (p) return p;
    if (service !== undefined && !this.host.records().some((b) => b.service === service)) return undefined;
    p = { service, balancers: this.names.map((n, i) => this.make(n, service, i === 0)), seen: 0, refreshedAt: 0 };
    this.pools.set(k, p);
    return p;
  }

  private refresh(p: Pool, now = Date.now()): void {
    if (p.seen === this.version) return;
    if (p.seen >= this.hardVersion && now - p.refreshedAt < REPORT_COALESCE_MS) return;
    p.seen = this.version;
    p.refreshedAt = now;
    const all = this.host.records();
    const view = p.service === undefined ? all : all.filter((b) => b.service === p.service);
    for (const b of p.balancers) b.update(view, now);
  }

  /** Rebuilds the pools when balancers were added (a plugin tapping `pick` after start). */
  private syncBalancers(): void {
    const taps = this.host.hooks.pick.taps;
    if (taps.length === this.tapCount) return;
    this.tapCount = taps.length;
    const names: string[] = [];
    for (const t of taps) if (!names.includes(t.name)) names.push(t.name);
    for (const p of this.host.plugins) if (p.family === 'balancer' && hasPicker(p) && !names.includes(p.name)) names.push(p.name);
    this.names = names;
    this.pools.clear();
  }

  private make(name: string, service: string | undefined, lead: boolean): LocalBalancer {
    const h = this.host;
    const plugin = h.plugins.find((p) => p.name === name) ?? { name, apply() {} };
    const pool = service === undefined ? 'all' : `service ${service}`;
    return new LocalBalancer(plugin, {
      hooks: h.hooks,
      degraded: h.config.degraded,
      panicThreshold: h.config.panicThreshold,
      slowStart: h.config.slowStart,
      pool,
      ...(lead ? { logger: h.logger, onPanic: (c: PanicChange) => this.alert(c, pool, service) } : {}),
    });
  }

  private alert(c: PanicChange, pool: string, service: string | undefined): void {
    const h = this.host;
    void h.hooks.alert
      .promise({ kind: 'panic', node: h.node, at: c.at, engaged: c.engaged, pool, ...(service !== undefined ? { service } : {}), healthy: c.healthy, known: c.known, thresholdPercent: c.thresholdPercent, servers: c.servers })
      .catch(() => {});
  }
}
