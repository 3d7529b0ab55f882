/**
 * What the status page shows, kept by the load balancer's HTTP listener: a JSON view of each
 * backend, a short history of its CPU/memory/load/latency for the charts, a log of recent
 * transitions, and the live-update fan-out (server-sent events). Fed by the `checked` and
 * `transition` hooks; updates are coalesced (at most one event per `flushMs`), so a busy load
 * balancer sends a page a few small messages a second, never one per check.
 */
import type { CheckResult, Transition } from '../plugin/hooks.ts';
import { nameOf, type ObservedBackend, type ObservedLb } from './metrics.ts';

/** Points kept per backend for the charts (one per check at most every `pointMs`). */
export const HISTORY_POINTS = 180;
/** Transitions kept for the page's log. */
export const TRANSITION_LOG = 200;

/** One backend as the page and GET /api/backends show it. */
export interface BackendJson {
  address: string;
  service: string | null;
  name: string | null;
  state: string;
  since: number;
  verdict: string | null;
  reason: string | null;
  agentAdmin: string | null;
  adminState: string | null;
  weight: number;
  failures: number;
  successes: number;
  checks: number;
  latencyMs: number | null;
  lastError: string | null;
  reportedAt: number | null;
  ageMs: number | null;
  metrics: Record<string, number>;
  /** In a load balancer group: the members whose results decided the state. */
  checkedBy?: string[];
}

export interface TransitionJson {
  server: string;
  from: string;
  to: string;
  reason: string;
  at: number;
}

/** [time ms, cpu %, memory %, load1, latency ms]; null where not reported. */
export type Point = [number, number | null, number | null, number | null, number | null];

export function backendJson(b: ObservedBackend): BackendJson {
  return {
    address: b.address,
    service: b.service ?? null,
    name: nameOf(b) || null,
    state: b.state,
    since: b.since ?? 0,
    verdict: b.verdict ?? null,
    reason: b.reason ?? null,
    agentAdmin: b.agentAdmin ?? null,
    adminState: b.adminState ?? null,
    weight: b.weight,
    failures: b.failures ?? 0,
    successes: b.successes ?? 0,
    checks: b.checks ?? 0,
    latencyMs: b.latencyMs,
    lastError: b.lastError ?? null,
    reportedAt: b.reportedAt,
    ageMs: b.ageMs ?? null,
    metrics: { ...b.metrics },
    ...(b.checkedBy ? { checkedBy: [...b.checkedBy] } : {}),
  };
}

/** A fixed-size ring of chart points. */
class Ring {
  private readonly data: Point[] = [];
  private at = 0;
  push(p: Point): void {
    if (this.data.length < HISTORY_POINTS) this.data.push(p);
    else {
      this.data[this.at] = p;
      this.at = (this.at + 1) % HISTORY_POINTS;
    }
  }
  list(): Point[] {
    return [...this.data.slice(this.at), ...this.data.slice(0, this.at)];
  }
  get last(): Point | undefined {
    return this.data.length === 0 ? undefined : this.data[(this.at + this.data.length - 1) % this.data.length];
  }
}

export interface Subscriber {
  /** Sends one server-sent event; returns false when the client is gone. */
  send(event: string, data: unknown): boolean;
}

export interface PageConfig {
  node: string;
  checkInterval: number;
  rise: number;
  fall: number;
  admin: boolean;
}

export class Observer {
  private readonly history = new Map<string, Ring>();
  private readonly transitions: TransitionJson[] = [];
  private readonly subscribers = new Set<Subscriber>();
  private readonly dirty = new Set<string>();
  private fresh: TransitionJson[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly pointMs: number;

  constructor(
    private readonly lb: ObservedLb,
    readonly page: PageConfig,
    private readonly flushMs = 200,
    readonly maxSubscribers = 64,
  ) {
    this.pointMs = Math.max(1000, Math.min(page.checkInterval * 1000, 10_000));
    lb.hooks.checked.tap('http-observer', (b, res) => this.onChecked(b as ObservedBackend, res));
    lb.hooks.transition.tap('http-observer', (t) => this.onTransition(t));
  }

  backends(): BackendJson[] {
    return this.lb.currentBackends().map(backendJson);
  }

  snapshot() {
    const live = new Set(this.lb.currentBackends().map((b) => b.address));
    const history: Record<string, Point[]> = {};
    for (const [address, ring] of this.history) if (live.has(address)) history[address] = ring.list();
    return { now: Date.now(), page: this.page, backends: this.backends(), history, transitions: [...this.transitions] };
  }

  /** Adds a live-update client; false when there are too many already. */
  subscribe(s: Subscriber): boolean {
    if (this.subscribers.size >= this.maxSubscribers) return false;
    this.subscribers.add(s);
    return true;
  }

  unsubscribe(s: Subscriber): void {
    this.subscribers.delete(s);
  }

  get subscriberCount(): number {
    return this.subscribers.size;
  }

  /** Something about `address` changed outside the hooks (admin API): push it to the pages. */
  touch(address: string): void {
    this.dirty.add(address);
    this.schedule();
  }

  onChecked(b: ObservedBackend, res: CheckResult): void {
    let ring = this.history.get(b.address);
    if (!ring) this.history.set(b.address, (ring = new Ring()));
    const last = ring.last;
    if (!last || res.at - last[0] >= this.pointMs) {
      const m = res.metrics ?? {};
      const v = (k: string) => (typeof m[k] === 'number' && Number.isFinite(m[k]) ? Math.round(m[k]! * 100) / 100 : null);
      ring.push([res.at, v('cpu'), v('memory'), v('load1'), res.ok ? res.latencyMs : null]);
    }
    this.dirty.add(b.address);
    this.schedule();
  }

  onTransition(t: Transition): void {
    const j: TransitionJson = { server: t.server, from: t.from, to: t.to, reason: t.reason, at: t.at };
    this.transitions.push(j);
    if (this.transitions.length > TRANSITION_LOG) this.transitions.shift();
    this.fresh.push(j);
    this.dirty.add(t.server);
    this.schedule();
  }

  private schedule(): void {
    if (this.timer || this.subscribers.size === 0) {
      if (this.subscribers.size === 0) {
        this.dirty.clear();
        this.fresh = [];
      }
      return;
    }
    this.timer = setTimeout(() => this.flush(), this.flushMs);
    this.timer.unref();
  }

  /** Sends the coalesced changes to every page. */
  flush(): void {
    this.timer = undefined;
    const changed = this.lb.currentBackends().filter((b) => this.dirty.has(b.address));
    const live = new Set(this.lb.currentBackends().map((b) => b.address));
    const removed = [...this.dirty].filter((a) => !live.has(a));
    for (const a of removed) this.history.delete(a);
    const points: Record<string, Point> = {};
    for (const b of changed) {
      const p = this.history.get(b.address)?.last;
      if (p) points[b.address] = p;
    }
    const msg = { now: Date.now(), backends: changed.map(backendJson), removed, points, transitions: this.fresh };
    this.dirty.clear();
    this.fresh = [];
    for (const s of this.subscribers) if (!s.send('update', msg)) this.subscribers.delete(s);
  }

  /** Sends everything again (a backend was added or removed, the page must redraw its rows). */
  broadcastSnapshot(): void {
    const snap = this.snapshot();
    for (const s of this.subscribers) if (!s.send('snapshot', snap)) this.subscribers.delete(s);
  }

  close(): void {
    clearTimeout(this.timer);
    this.subscribers.clear();
  }
}
