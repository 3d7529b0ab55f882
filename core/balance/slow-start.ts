/**
 * Slow start (as Envoy's `slow_start_config`): a backend that comes UP from DOWN, DRAINING or
 * MAINT (and, with `newBackends`, one seen for the first time) takes a growing share of picks
 * over `window` seconds. Its effective weight is
 *   weight × max(minWeightPercent / 100, (elapsed / window) ^ (1 / aggression)),
 * so aggression 1 ramps linearly, above 1 faster at first. Strategy-agnostic: LocalBalancer
 * mixes the ramping servers in by these weights (RampMix, earliest deadline first) and lets the
 * strategy balance the rest, so a ramping server gets exactly its effective weight's share of
 * picks whatever the strategy, and the others share the remainder as the strategy says.
 */
import type { BackendView } from '../plugin/hooks.ts';
import type { HealthState } from '../health/states.ts';
import { SlotHeap } from './heap.ts';
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

/**
 * Earliest-deadline-first over weighted entries: entry i is due every 1/w_i of virtual time and
 * the earliest due one is picked (ties: the lower index), so over any stretch each entry gets
 * its weight's share, interleaved. Weights may change between picks (`reweigh`): deadlines
 * carry on from the current virtual time. O(log n) per pick.
 */
export class Edf {
  private w: number[] = [];
  private due: number[] = [];
  private vt = 0;
  private readonly heap = new SlotHeap((a, b) => this.due[a]! < this.due[b]! || (this.due[a] === this.due[b] && a < b));

  /** Starts over with `weights` (each > 0 to be picked; 0 = never). */
  reset(weights: readonly number[]): void {
    this.w = [...weights];
    this.vt = 0;
    this.due = this.w.map((x) => (x > 0 ? 1 / (2 * x) : Infinity));
    this.heap.reset(this.w.map((_, i) => i).filter((i) => this.w[i]! > 0), this.w.length);
  }

  /** New weights for the same entries, keeping the rotation's place. */
  reweigh(weights: readonly number[]): void {
    if (weights.length !== this.w.length) return this.reset(weights);
    for (let i = 0; i < weights.length; i++) {
      const x = weights[i]!;
      if (x === this.w[i]) continue;
      this.w[i] = x;
      this.due[i] = x > 0 ? this.vt + 1 / (2 * x) : Infinity;
      if (x > 0) this.heap.push(i);
      else if (this.heap.has(i)) this.heap.fix(i);
    }
  }

  get size(): number {
    return this.w.length;
  }

  weight(i: number): number {
    return this.w[i] ?? 0;
  }

  /** The next entry (-1 when none has a weight). */
  next(): number {
    const i = this.heap.peek();
    if (i < 0 || !(this.w[i]! > 0)) return -1;
    this.vt = this.due[i]!;
    this.due[i] = this.vt + 1 / this.w[i]!;
    this.heap.fix(i);
    return i;
  }

  /** The next entry for which `ok` holds, passing over (without charging) the others; -1 if none. */
  nextWhere(ok: (i: number) => boolean, maxSkips: number): number {
    const skipped: number[] = [];
    let found = -1;
    while (skipped.length <= maxSkips) {
      const i = this.heap.peek();
      if (i < 0 || !(this.w[i]! > 0)) break;
      if (ok(i)) {
        found = this.next();
        break;
      }
      skipped.push(this.heap.pop());
    }
    for (const i of skipped) this.heap.push(i);
    return found;
  }
}
