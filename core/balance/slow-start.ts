/**
 * Slow start (as Envoy's `slow_start_config`): a backend that comes UP from DOWN, DRAINING or
 * MAINT (and, with `newBackends`, one seen for the first time) takes a growing share of picks
 * over `window` seconds. Its effective weight is
 *   weight × max(minWeightPercent / 100, (elapsed / window) ^ (1 / aggression)),
 * so aggression 1 ramps linearly, above 1 faster at first. Strategy-agnostic: LocalBalancer
 * mixes the ramping servers in by these weights (earliest deadline first, edf.ts) and lets the
 * strategy balance the rest, so a ramping server gets exactly its effective weight's share of
 * picks whatever the strategy, and the others share the remainder as the strategy says.
 */
import type { BackendView } from '../plugin/hooks.ts';
import type { HealthState } from '../health/states.ts';
import type { SlowStartOptions } from './options.ts';

/** States a ramp survives in (the server may take picks); any other state ends it. */
const RAMP_STATES: ReadonlySet<HealthState> = new Set(['UP', 'DEGRADED']);
/** States a return from which starts a ramp. */
const RETURNS_FROM: ReadonlySet<HealthState> = new Set(['DOWN', 'DRAINING', 'MAINT']);

export class SlowStart {
  /** Each backend's state at the last `observe`. */
  private readonly prev = new Map<string, HealthState>();
  /** Ramping backends: address → ramp start (epoch ms). */
  readonly ramps = new Map<string, number>();

  constructor(readonly o: SlowStartOptions) {}

  get on(): boolean {
    return this.o.window > 0;
  }

  /**
   * Notes each backend's state: starts ramps for those that came UP, drops those that left UP
   * (or the view). Returns whether the set of ramping backends changed. O(N).
   */
  observe(view: readonly BackendView[], now: number): boolean {
    if (!this.on) return false;
    let changed = false;
    const seen = new Set<string>();
    for (const b of view) {
      seen.add(b.address);
      const before = this.prev.get(b.address);
      this.prev.set(b.address, b.state);
      if (this.ramps.has(b.address)) {
        if (!RAMP_STATES.has(b.state)) {
          this.ramps.delete(b.address);
          changed = true;
        }
        continue;
      }
      if (b.state !== 'UP' || before === 'UP' || before === 'DEGRADED') continue;
      const returning = before !== undefined && RETURNS_FROM.has(before);
      const fresh = before === undefined || before === 'UNKNOWN';
      if (!returning && !(fresh && this.o.newBackends)) continue;
      // From when it entered UP, when known (a client's first view of a backend mid-ramp).
      const start = b.since !== undefined && b.since <= now ? b.since : now;
      if (now - start >= this.o.window * 1000) continue;
      this.ramps.set(b.address, start);
      changed = true;
    }
    if (this.prev.size > seen.size) {
      for (const a of this.prev.keys()) if (!seen.has(a)) this.prev.delete(a);
      for (const a of this.ramps.keys()) {
        if (!seen.has(a)) {
          this.ramps.delete(a);
          changed = true;
        }
      }
    }
    return changed;
  }

  /** The share of its weight `address` gets now (1 when it does not ramp). */
  factor(address: string, now: number): number {
    const start = this.ramps.get(address);
    if (start === undefined) return 1;
    const t = Math.max(0, now - start) / (this.o.window * 1000);
    if (t >= 1) return 1;
    return Math.max(this.o.minWeightPercent / 100, t ** (1 / this.o.aggression));
  }

  /** Ends the ramps whose window has passed; returns whether any ended. */
  expire(now: number): boolean {
    let ended = false;
    for (const [a, start] of this.ramps) {
      if (now - start >= this.o.window * 1000) {
        this.ramps.delete(a);
        ended = true;
      }
    }
    return ended;
  }

  /** How often ramping weights are recomputed (ms): 1/50 of the window, 20 ms to 1 s. */
  get tickMs(): number {
    return Math.min(1000, Math.max(20, (this.o.window * 1000) / 50));
  }
}
