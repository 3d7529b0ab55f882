/**
 * LocalBalancer: one pool's balancing, the same code in the load balancer (PICK) and in a
 * client's process (`qhcp/client` watch().pick()). It is told the whole view on every change
 * (`update`: all backends, any state) and answers picks from state kept between them:
 *   - which servers may be picked: UP ones (DEGRADED ones as the `degraded` policy says), or in
 *     panic mode every backend whose state is known (panic threshold, below);
 *   - slow start: servers ramping after a return take their effective weight's share of picks
 *     (slow-start.ts), the strategy balances the others;
 *   - the strategy: the plugin's maintained Picker (picker.ts; O(1) or O(log N) per pick), or,
 *     for a plugin without one, its `pick` hook tap, called with the pool each time.
 *
 * Panic (Envoy's healthy_panic_threshold): when fewer than `panicThreshold` percent of the
 * backends whose health is known (UP, DEGRADED, DOWN; DRAINING and MAINT are set aside on
 * purpose and UNKNOWN is not known yet) are healthy, but at least one is, picks go to all of
 * those known backends rather than overload the few healthy ones. With none healthy there is
 * nobody to protect: a pick finds no server, as without panic.
 */
import type { BackendView, Hooks, PickRequest } from '../plugin/hooks.ts';
import type { QhcpPlugin } from '../plugin/loader.ts';
import type { Logger } from '../util/log.ts';
import { candidates, type DegradedPolicy, type HealthState } from '../health/states.ts';
import { hasPicker, r3, type Picker, type PickResult } from './picker.ts';
import { SlowStart } from './slow-start.ts';
import { Edf } from './edf.ts';
import { PANIC_THRESHOLD_DEFAULT, SLOW_START_DEFAULTS, type SlowStartOptions } from './options.ts';

export type { PickResult, Picker, PickerPlugin } from './picker.ts';
export { PANIC_THRESHOLD_DEFAULT, SLOW_START_DEFAULTS, type SlowStartOptions } from './options.ts';

/** States whose health is known; in panic, picks go to all of them. */
const KNOWN: ReadonlySet<HealthState> = new Set(['UP', 'DEGRADED', 'DOWN']);

/** Panic mode engaged or ended. */
export interface PanicChange {
  engaged: boolean;
  /** Healthy backends (UP, and DEGRADED unless `degraded` is never) and known ones. */
  healthy: number;
  known: number;
  thresholdPercent: number;
  /** The backends picks go to now. */
  servers: string[];
  at: number;
}

export interface LocalBalancerOptions {
  slowStart?: Partial<SlowStartOptions>;
  /** Percent of known backends that must be healthy; below it, panic mode. 0 = off. Default 50. */
  panicThreshold?: number;
  logger?: Logger;
  /** How DEGRADED backends are used (config `degraded`), default fallback. */
  degraded?: DegradedPolicy;
  /** The hooks the plugin was applied to (for a plugin without `picker()`, its `pick` taps). */
  hooks?: Hooks;
  /** Called when panic mode engages or ends (the load balancer alerts). */
  onPanic?: (change: PanicChange) => void;
  /** The pool's name in log lines ("all", "service web"). */
  pool?: string;
}

type TapFn = (r: PickRequest) => BackendView | null | undefined;

export class LocalBalancer {
  /** The plugin's maintained picker, when it offers one. */
  private readonly picker: Picker | undefined;
  private readonly hooks: Hooks | undefined;
  private readonly slow: SlowStart;
  private readonly threshold: number;
  private readonly degraded: DegradedPolicy;
  private view: readonly BackendView[] = [];
  /** The servers that may be picked (config order), and by address. */
  private offeredList: BackendView[] = [];
  private offeredSet = new Map<string, BackendView>();
  /** Offered servers not ramping: the strategy's pool. */
  private rest: BackendView[] = [];
  private restSet = new Map<string, BackendView>();
  /** Offered servers ramping (slow start), entries 1..k of the mix (edf.ts); entry 0 is `rest`. */
  private ramping: BackendView[] = [];
  private readonly mix = new Edf();
  private stale = true;
  private nextTick = 0;
  private panicOn = false;
  private counts = { up: 0, degraded: 0, healthy: 0, known: 0 };
  /** Why the last `pick` returned nothing. */
  lastMiss = 'no server is UP';
  /** `from`, worded once per update. */
  private fromText: string | undefined;

  constructor(
    readonly plugin: QhcpPlugin,
    private readonly opts: LocalBalancerOptions = {},
  ) {
    this.picker = hasPicker(plugin) ? plugin.picker() : undefined;
    this.hooks = opts.hooks;
    this.slow = new SlowStart({ ...SLOW_START_DEFAULTS, ...opts.slowStart });
    this.threshold = opts.panicThreshold ?? PANIC_THRESHOLD_DEFAULT;
    this.degraded = opts.degraded ?? 'fallback';
  }

  /** Panic mode engaged. */
  get panic(): boolean {
    return this.panicOn;
  }

  /** The servers picks go to now (config order). */
  get offered(): readonly BackendView[] {
    return this.offeredList;
  }

  /** What picks are made from, for PICK_RESPONSE `why`: "3 UP", "1 DEGRADED (none UP)", "4 in panic (1 of 4 healthy, under 50%)". */
  get from(): string {
    return (this.fromText ??= this.describe());
  }

  private describe(): string {
    const n = this.offeredList.length;
    const c = this.counts;
    if (this.panicOn) return `${n} in panic mode (${c.healthy} of ${c.known} healthy, under ${this.threshold}%)`;
    let up = 0;
    for (const b of this.offeredList) if (b.state === 'UP') up++;
    return up === n ? `${up} UP` : up === 0 ? `${n} DEGRADED (none UP)` : `${n} UP or DEGRADED`;
  }

  /** The weight picks give `address` now: its weight scaled by slow start; undefined when it does not ramp. */
  effectiveWeight(address: string, now = Date.now()): number | undefined {
    if (!this.slow.ramps.has(address)) return undefined;
    const b = this.view.find((x) => x.address === address);
    return b ? b.weight * this.slow.factor(address, now) : undefined;
  }

  /** Backends ramping now, with the share of their weight they get. */
  rampFactors(now = Date.now()): Map<string, number> {
    return new Map([...this.slow.ramps.keys()].map((a) => [a, this.slow.factor(a, now)]));
  }

  /** The full current view (every backend, any state, config order): call on every change. O(N). */
  update(servers: readonly BackendView[], now = Date.now()): void {
    this.view = servers;
    this.slow.observe(servers, now);
    const c = { up: 0, degraded: 0, healthy: 0, known: 0 };
    for (const b of servers) {
      if (KNOWN.has(b.state)) c.known++;
      if (b.state === 'UP') c.up++;
      else if (b.state === 'DEGRADED') c.degraded++;
    }
    c.healthy = c.up + (this.degraded === 'never' ? 0 : c.degraded);
    this.counts = c;
    const panic = this.threshold > 0 && c.healthy > 0 && c.healthy * 100 < this.threshold * c.known;
    this.offeredList = panic ? servers.filter((b) => KNOWN.has(b.state)) : candidates(servers, this.degraded);
    this.offeredSet = new Map(this.offeredList.map((b) => [b.address, b]));
    this.fromText = undefined;
    if (panic !== this.panicOn) {
      this.panicOn = panic;
      const change: PanicChange = { engaged: panic, healthy: c.healthy, known: c.known, thresholdPercent: this.threshold, servers: this.offeredList.map((b) => b.address), at: now };
      const fields = { pool: this.opts.pool ?? 'all', healthy: c.healthy, known: c.known, threshold: `${this.threshold}%` };
      if (panic) this.opts.logger?.warn('panic mode: too few backends healthy, balancing across every known one', fields);
      else this.opts.logger?.info('panic mode ended', fields);
      this.opts.onPanic?.(change);
    }
    this.stale = true;
  }

  /** One server, or undefined (then `lastMiss` says why). O(1) or O(log N) with a maintained picker. */
  pick(key?: string, now = Date.now()): PickResult | undefined {
    if (this.slow.ramps.size > 0 && now >= this.nextTick) {
      if (this.slow.expire(now)) this.stale = true;
      else this.reweigh(now);
      this.nextTick = now + this.slow.tickMs;
    }
    if (this.stale) this.rebuild(now);
    if (this.offeredList.length === 0) {
      this.lastMiss = 'no server is UP';
      return undefined;
    }
    if (this.ramping.length > 0) {
      const i = this.mix.next();
      if (i > 0) {
        const b = this.ramping[i - 1]!;
        const f = this.slow.factor(b.address, now);
        return { server: b, why: `slow start: ${Math.round(f * 100)}% of weight ${r3(b.weight)}` };
      }
    }
    return this.strategy(key, now);
  }

  /** Splits the offered servers into ramping and rest, and tells the picker. */
  private rebuild(now: number): void {
    this.stale = false;
    this.rest = [];
    this.ramping = [];
    for (const b of this.offeredList) (this.slow.ramps.has(b.address) ? this.ramping : this.rest).push(b);
    this.restSet = this.ramping.length > 0 ? new Map(this.rest.map((b) => [b.address, b])) : this.offeredSet;
    this.picker?.update(this.rest, now);
    if (this.ramping.length > 0) {
      this.mix.reset(this.mixWeights(now));
      this.nextTick = now + this.slow.tickMs;
    }
  }

  private reweigh(now: number): void {
    if (!this.stale && this.ramping.length > 0) this.mix.reweigh(this.mixWeights(now));
  }

  /** The mix's weights: entry 0 the rest's total weight, then each ramping server's effective weight. */
  private mixWeights(now: number): number[] {
    const pos = (w: number) => (Number.isFinite(w) && w > 0 ? w : 0);
    let rest = 0;
    for (const b of this.rest) rest += pos(b.weight);
    // Weights all 0 count as equal (as the weighted rotation does).
    if (rest === 0) rest = this.rest.length;
    return [rest, ...this.ramping.map((b) => pos(b.weight) * this.slow.factor(b.address, now))];
  }

  /** The strategy's pick among `rest`: the maintained picker, else the plugin's `pick` taps. */
  private strategy(key: string | undefined, now: number): PickResult | undefined {
    if (this.rest.length === 0) {
      this.lastMiss = 'the balancer chose no server';
      return undefined;
    }
    if (this.picker) {
      const r = this.picker.pick(key, now);
      if (!r) {
        this.lastMiss = 'the balancer chose no server';
        return undefined;
      }
      const own = this.restSet.get(r.server.address);
      if (!own) {
        this.lastMiss = `the balancer ${this.plugin.name} chose a server it was not offered`;
        return undefined;
      }
      return own === r.server ? r : { server: own, why: r.why };
    }
    return this.viaHook(key, now);
  }

  private viaHook(key: string | undefined, now: number): PickResult | undefined {
    const taps = this.hooks ? this.hooks.pick.taps.filter((t) => t.name === this.plugin.name) : [];
    if (taps.length === 0) {
      this.lastMiss = `the balancer ${this.plugin.name} has no pick tap and no picker()`;
      return undefined;
    }
    let why: string | undefined;
    const request: PickRequest = { servers: this.rest, key, now, explain: (text) => (why = String(text)) };
    for (const tap of taps) {
      why = undefined;
      // The taps as registered: each already guarded (guardHooks), so a throw yields undefined.
      const chosen = (tap.fn as TapFn)(request);
      if (chosen === undefined) continue;
      const own = chosen ? this.restSet.get(chosen.address) : undefined;
      if (own && own === chosen) return { server: own, why: why ?? 'chosen' };
      this.lastMiss = chosen ? `the balancer ${this.plugin.name} chose a server it was not offered` : 'the balancer chose no server';
      return undefined;
    }
    this.lastMiss = 'the balancer chose no server';
    return undefined;
  }
}
