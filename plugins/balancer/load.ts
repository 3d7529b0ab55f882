/**
 * What the load-aware balancers share: reading a backend's load from its last report, treating
 * a stale or missing report as unknown load, and counting picks since each backend's last report
 * (the herd guard: a server that looked idle in its last report stops looking idle after the
 * picks it has been sent since).
 */
import type { BackendView } from '../../core/plugin/hooks.ts';
import { metricNameSchema } from '../../core/protocol/messages.ts';

export interface LoadOptions {
  /** A report older than this (ms, counting its sample's own age) is unknown load. */
  maxReportAgeMs: number;
  /** The metric holding the load (default loadScore, 0..1). */
  metric: string;
  /** What an unknown load counts as: the mean of the known ones, or a fixed value. */
  unknownLoad: 'mean' | number;
}

export const LOAD_DEFAULTS: LoadOptions = { maxReportAgeMs: 30_000, metric: 'loadScore', unknownLoad: 'mean' };

/** JSON-schema properties for LoadOptions, shared by every load-aware balancer's schema. */
/** The herd guard's option, shared by the load-aware strategies that count picks (PicksSinceReport). */
export function pickCostSchema(dflt: number) {
  return { type: 'number', minimum: 0, maximum: 1, default: dflt, description: `load one pick adds to a server until its next report (0: no herd guard)` } as const;
}

export const LOAD_OPTIONS_SCHEMA = {
  maxReportAgeMs: { type: 'integer', minimum: 100, maximum: 86_400_000, default: LOAD_DEFAULTS.maxReportAgeMs, description: 'a report older than this counts as unknown load' },
  metric: { ...metricNameSchema, default: LOAD_DEFAULTS.metric, description: 'the metric that holds the load' },
  unknownLoad: {
    anyOf: [{ const: 'mean' }, { type: 'number', minimum: 0 }],
    default: LOAD_DEFAULTS.unknownLoad,
    description: '"mean" (of the known loads) or a fixed load for servers whose load is unknown',
  },
} as const;

/**
 * The load from `s`'s last report, or undefined when it is unknown: no report yet, the report
 * (plus the age its sample already had) older than `maxReportAgeMs`, or no finite value.
 */
export function reportedLoad(s: BackendView, now: number, o: Pick<LoadOptions, 'maxReportAgeMs' | 'metric'>): number | undefined {
  if (s.reportedAt === null) return undefined;
  const age = now - s.reportedAt + (s.ageMs ?? 0);
  if (age > o.maxReportAgeMs) return undefined;
  const v = s.metrics[o.metric];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/**
 * Each server's load, unknown ones filled in per `unknownLoad` (the mean of the known loads, so
 * an unknown server is neither favoured nor starved; 0.5 when no load is known at all).
 */
export function loadsOf(servers: readonly BackendView[], now: number, o: LoadOptions): { loads: number[]; known: boolean[] } {
  const raw = servers.map((s) => reportedLoad(s, now, o));
  const knownVals = raw.filter((v): v is number => v !== undefined);
  const fill = typeof o.unknownLoad === 'number' ? o.unknownLoad : knownVals.length ? knownVals.reduce((a, b) => a + b, 0) / knownVals.length : 0.5;
  return { loads: raw.map((v) => v ?? fill), known: raw.map((v) => v !== undefined) };
}

/**
 * A pool's loads as of the last `update` (unknown ones filled per `unknownLoad`), and the picks
 * sent to each server since its last report (the herd guard; a new report, i.e. a new
 * `reportedAt`, resets a server's count). Indexed by position in `servers`. `stale(now)` says
 * when a report has aged past `maxReportAgeMs` since: the loads must be read again.
 */
export class LoadState {
  servers: readonly BackendView[] = [];
  loads: number[] = [];
  picks: number[] = [];
  private reportedAt: Array<number | null> = [];
  private expiresAt = Infinity;

  /** O(N). */
  update(servers: readonly BackendView[], now: number, o: LoadOptions): void {
    const before = new Map<string, number>();
    this.servers.forEach((s, i) => before.set(s.address, i));
    this.loads = loadsOf(servers, now, o).loads;
    this.picks = servers.map((s) => {
      const j = before.get(s.address);
      return j !== undefined && this.reportedAt[j] === s.reportedAt ? this.picks[j]! : 0;
    });
    this.reportedAt = servers.map((s) => s.reportedAt);
    this.servers = servers;
    let until = Infinity;
    for (const s of servers) {
      if (reportedLoad(s, now, o) === undefined) continue;
      until = Math.min(until, s.reportedAt! - (s.ageMs ?? 0) + o.maxReportAgeMs);
    }
    this.expiresAt = until;
  }

  /** Whether a report known at the last update has gone stale since. */
  stale(now: number): boolean {
    return now > this.expiresAt;
  }
}

/** Picks the share cap looks back over. */
export const SHARE_WINDOW = 100;

/** JSON-schema property for the share cap (load-aware balancers). */
export const maxShareSchema = {
  type: 'number',
  minimum: 0.5,
  maximum: 1,
  default: 0.75,
  description: `most of the last ${SHARE_WINDOW} picks one server may get while another is UP, whatever it reports (and never more than 3 times its fair share 1/n); 1: no cap`,
} as const;

/**
 * The share cap: a reported figure alone (a loadScore of 0 against 0.9, a weight metric of 1e9)
 * never captures all traffic. A server that already had `limit` of the last SHARE_WINDOW picks,
 * where limit = min(maxShare, 3/n) × SHARE_WINDOW for n servers offered, is passed over while
 * another server is offered (docs/plugins-builtin.md, "Share cap").
 *
 * For pickers that keep candidates in a heap: a server is parked (`park`, out of the heap) by
 * the pick that brings it to its cap, and put back (`unpark`) when a pick of its leaves the
 * window, so no pick walks past capped servers. O(1) per pick besides those two calls. At most
 * SHARE_WINDOW servers are parked, and with two or more never all of them (a cap is always more
 * than 1/n of the window). Servers are slots (positions in the pool of the last `reset`).
 */
export class ShareCap {
  /** The last SHARE_WINDOW picks (slots, a ring), how many of them each slot had, which are parked. */
  private ring: number[] = [];
  private next = 0;
  private counts: Int32Array = new Int32Array(0);
  private parked: Uint8Array = new Uint8Array(0);
  private servers: readonly BackendView[] = [];
  private limit = Infinity;

  constructor(
    readonly maxShare: number,
    private readonly park: (i: number) => void = () => {},
    private readonly unpark: (i: number) => void = () => {},
  ) {}

  /** A new pool (the owner rebuilt its heap with every slot): the window is carried over by address, those at their cap parked. O(N). */
  reset(servers: readonly BackendView[]): void {
    const n = servers.length;
    const slot = new Map(servers.map((s, i) => [s.address, i]));
    const old = this.servers;
    // The window in order, oldest first, as new slots (-1: left the pool).
    const ordered = this.ring.length < SHARE_WINDOW ? this.ring : [...this.ring.slice(this.next), ...this.ring.slice(0, this.next)];
    this.ring = ordered.map((j) => (j >= 0 ? (slot.get(old[j]!.address) ?? -1) : -1));
    this.next = 0;
    this.servers = servers;
    this.counts = new Int32Array(n);
    for (const j of this.ring) if (j >= 0) this.counts[j]!++;
    this.parked = new Uint8Array(n);
    this.limit = n < 2 || this.maxShare >= 1 ? Infinity : Math.max(1, Math.floor(Math.min(this.maxShare, 3 / n) * SHARE_WINDOW));
    for (let i = 0; i < n; i++) {
      if (this.counts[i]! >= this.limit) {
        this.parked[i] = 1;
        this.park(i);
      }
    }
  }

  /** Whether slot `i` has had its share of the recent picks. */
  full(i: number): boolean {
    return this.counts[i]! >= this.limit;
  }

  /** Records a pick of slot `i` (after the owner re-sorted it): parks it at its cap, brings back one that fell below. */
  picked(i: number): void {
    if (this.limit === Infinity) return;
    let out = -1;
    if (this.ring.length >= SHARE_WINDOW) {
      out = this.ring[this.next]!;
      if (out >= 0) this.counts[out]!--;
      this.ring[this.next] = i;
      this.next = (this.next + 1) % SHARE_WINDOW;
    } else this.ring.push(i);
    this.counts[i]!++;
    if (!this.parked[i] && this.counts[i]! >= this.limit) {
      this.parked[i] = 1;
      this.park(i);
    }
    if (out >= 0 && this.parked[out] && this.counts[out]! < this.limit) {
      this.parked[out] = 0;
      this.unpark(out);
    }
  }
}
