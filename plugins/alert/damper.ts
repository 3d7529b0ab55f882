/**
 * Flap damping shared by the alert plugins: at most one alert per server per `minIntervalMs`.
 * A transition inside the window is held back; when the window ends, the latest held one is
 * delivered with the number of transitions that were dropped in between (`suppressed`), so the
 * last word about a server is never lost and the operator learns that it flapped.
 * Start/stop events concern no one server and pass straight through.
 */
import { sanitize } from '../../core/util/sanitize.ts';
import type { AlertEvent } from '../../core/plugin/hooks.ts';

export type Deliver = (event: AlertEvent, suppressed: number) => void;

interface DamperEntry {
  lastSentAt: number;
  held: AlertEvent | undefined;
  /** Transitions dropped since the last delivery (superseded by a later one). */
  dropped: number;
  timer: NodeJS.Timeout | undefined;
}

export class Damper {
  private readonly servers = new Map<string, DamperEntry>();

  constructor(
    private readonly minIntervalMs: number,
    private readonly deliver: Deliver,
    private readonly now: () => number = Date.now,
  ) {}

  submit(e: AlertEvent): void {
    if (e.kind !== 'transition' || this.minIntervalMs <= 0) return this.deliver(e, 0);
    const key = e.transition.server;
    let st = this.servers.get(key);
    if (!st) this.servers.set(key, (st = { lastSentAt: -Infinity, held: undefined, dropped: 0, timer: undefined }));
    const now = this.now();
    if (!st.held && now - st.lastSentAt >= this.minIntervalMs) {
      this.send(st, e, now);
      return;
    }
    if (st.held) st.dropped++;
    st.held = e;
    if (!st.timer) {
      st.timer = setTimeout(() => this.release(st), Math.max(0, st.lastSentAt + this.minIntervalMs - now));
      st.timer.unref();
    }
  }

  /** Delivers every held alert now (on stop), so nothing is lost. */
  flush(): void {
    for (const st of this.servers.values()) this.release(st);
  }

  /** Held alerts not yet delivered. */
  get held(): number {
    let n = 0;
    for (const st of this.servers.values()) if (st.held) n++;
    return n;
  }

  private release(st: DamperEntry): void {
    clearTimeout(st.timer);
    st.timer = undefined;
    if (st.held) this.send(st, st.held, this.now());
  }

  private send(st: DamperEntry, e: AlertEvent, now: number): void {
    const suppressed = st.dropped;
    st.held = undefined;
    st.dropped = 0;
    st.lastSentAt = now;
    this.deliver(e, suppressed);
  }
}

/** The JSON body alerts carry (webhook body, exec stdin, log line): flat and stable. */
export function alertPayload(e: AlertEvent, suppressed: number): Record<string, unknown> {
  if (e.kind === 'transition') {
    const t = e.transition;
    return {
      event: 'transition',
      node: sanitize(e.node),
      time: new Date(t.at).toISOString(),
      at: t.at,
      server: sanitize(t.server),
      from: t.from,
      to: t.to,
      // Reasons and errors carry agents' text: escaped for every reader (log, webhook, exec).
      reason: sanitize(t.reason),
      failures: t.failures,
      successes: t.successes,
      lastError: t.lastError === null ? null : sanitize(t.lastError),
      metrics: t.metrics,
      suppressed,
    };
  }
  const base = { event: e.kind, node: sanitize(e.node), time: new Date(e.at).toISOString(), at: e.at, servers: e.servers, suppressed };
  if (e.kind === 'panic') return { ...base, engaged: e.engaged, pool: e.pool, healthy: e.healthy, known: e.known, thresholdPercent: e.thresholdPercent };
  return base;
}

/** JSON-schema property for `minIntervalMs`, shared by the alert plugins' schemas. */
export const minIntervalSchema = <D extends number>(dflt: D) =>
  ({
    type: 'integer',
    minimum: 0,
    maximum: 86_400_000,
    default: dflt,
    description: 'least time between two alerts for the same server; transitions in between are held and counted (0: no damping)',
  }) as const;
