/**
 * weighted-round-robin: smooth weighted rotation, so a 5:1:1 pool gets a a b a c a a, not
 * a a a a a b c. Weights come from the configuration (`servers: [{address, weight}]`), from a
 * metric each server reports, or from its load (weight x (1 - load)); a stale or missing report
 * falls back to the configured weight (load.ts).
 *
 * Picks cost O(1) or O(log N) from state built when the pool or its weights change:
 *   - configured whole-number weights whose cycle is short (total weight x N up to 2^20): the
 *     smooth rotation's cycle (each pick, every server's credit grows by its weight and the
 *     richest pays the total), computed once, then walked;
 *   - otherwise (reported weights, fractions, huge pools): earliest deadline first, each server
 *     due every 1/weight (core/balance/edf.ts), O(log N) per pick. Same shares, as
 *     smooth (no server twice in a row while a lighter one waits longer than its period).
 */
import type { BackendView } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import type { Picker, PickResult } from '../../core/balance/picker.ts';
import { Picked, r3 } from '../../core/balance/picker.ts';
import { BalancerBody } from './body.ts';
import { Edf } from '../../core/balance/edf.ts';
import { LOAD_OPTIONS_SCHEMA, maxShareSchema, ShareCap, loadsOf, reportedLoad, type LoadOptions } from './load.ts';
import { metricNameSchema } from '../../core/protocol/messages.ts';

const PLUGIN_NAME = 'weighted-round-robin';

/** Share of its weight a fully loaded server keeps with `weightFrom: 'load'`. */
const MIN_LOAD_SHARE = 0.01;
/** Largest total weight x servers for which the exact smooth cycle is precomputed. */
const MAX_CYCLE_WORK = 1 << 20;
const WHY = (w: number, total: number) => `smooth weighted rotation, weight ${r3(w)} of total ${r3(total)}`;

type Opts = LoadOptions & { weightFrom: 'config' | 'metric' | 'load'; weightMetric: string };

/** Each server's weight (never negative; all zero means equal), and when a report behind one goes stale. */
export function weightsOf(servers: readonly BackendView[], now: number, o: Opts): { weights: number[]; expiresAt: number } {
  let w: number[];
  let expiresAt = Infinity;
  const expiry = (s: BackendView, metric: string) => {
    if (reportedLoad(s, now, { maxReportAgeMs: o.maxReportAgeMs, metric }) !== undefined) expiresAt = Math.min(expiresAt, s.reportedAt! - (s.ageMs ?? 0) + o.maxReportAgeMs);
  };
  if (o.weightFrom === 'metric') {
    w = servers.map((s) => {
      expiry(s, o.weightMetric);
      const v = reportedLoad(s, now, { maxReportAgeMs: o.maxReportAgeMs, metric: o.weightMetric });
      return v !== undefined && v >= 0 ? v : s.weight;
    });
  } else if (o.weightFrom === 'load') {
    const { loads } = loadsOf(servers, now, o);
    for (const s of servers) expiry(s, o.metric);
    w = servers.map((s, i) => s.weight * Math.max(MIN_LOAD_SHARE, 1 - Math.min(1, loads[i]!)));
  } else {
    w = servers.map((s) => s.weight);
  }
  w = w.map((x) => (Number.isFinite(x) && x > 0 ? x : 0));
  return { weights: w.some((x) => x > 0) ? w : w.map(() => 1), expiresAt };
}

/** The smooth rotation's cycle for whole-number weights (length = total weight), or undefined when too long. */
export function smoothCycle(weights: readonly number[]): number[] | undefined {
  const total = weights.reduce((a, b) => a + b, 0);
  if (!weights.every(Number.isInteger) || total === 0 || total * weights.length > MAX_CYCLE_WORK) return undefined;
  const credit = new Array<number>(weights.length).fill(0);
  const out: number[] = [];
  for (let t = 0; t < total; t++) {
    let best = 0;
    for (let i = 0; i < weights.length; i++) {
      credit[i]! += weights[i]!;
      if (credit[i]! > credit[best]!) best = i;
    }
    credit[best]! -= total;
    out.push(best);
  }
  return out;
}

export class WeightedRotationPicker implements Picker {
  private servers: readonly BackendView[] = [];
  private weights: number[] = [];
  private total = 0;
  private expiresAt = Infinity;
  private cycle: number[] | undefined;
  private at = 0;
  private readonly edf = new Edf();
  /** Reported weights: a server at its share cap sits out of the rotation until a pick of its leaves the window (load.ts). */
  private readonly cap: ShareCap;

  constructor(
    private readonly o: Opts,
    maxShare: number,
  ) {
    this.cap = new ShareCap(
      maxShare,
      (i) => this.edf.park(i),
      (i) => this.edf.unpark(i),
    );
  }

  update(servers: readonly BackendView[], now: number): void {
    const { weights, expiresAt } = weightsOf(servers, now, this.o);
    this.expiresAt = expiresAt;
    const same = servers.length === this.servers.length && servers.every((s, i) => s.address === this.servers[i]!.address);
    const unchanged = same && weights.every((w, i) => w === this.weights[i]);
    this.servers = servers;
    if (unchanged) return;
    this.weights = weights;
    this.total = weights.reduce((a, b) => a + b, 0);
    // Configured weights are the operator's choice and never capped: the exact cycle serves them.
    this.cycle = this.o.weightFrom === 'config' ? smoothCycle(weights) : undefined;
    if (this.cycle) this.at = 0;
    else if (same) this.edf.reweigh(weights);
    else {
      this.edf.reset(weights);
      this.cap.reset(servers);
    }
  }

  pick(_key: string | undefined, now: number): PickResult | undefined {
    const n = this.servers.length;
    if (n === 0) return undefined;
    if (now > this.expiresAt) this.update(this.servers, now);
    let i: number;
    if (this.cycle) {
      i = this.cycle[this.at]!;
      this.at = (this.at + 1) % this.cycle.length;
    } else {
      i = this.edf.next();
      if (i < 0) return undefined;
    }
    const s = this.servers[i]!;
    this.cap.picked(i);
    return new Picked(s, WHY, this.weights[i]!, this.total);
  }
}

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    weightFrom: { enum: ['config', 'metric', 'load'], default: 'config', description: 'where weights come from' },
    weightMetric: { ...metricNameSchema, default: 'weight', description: 'with weightFrom "metric": the reported metric holding the weight' },
    ...LOAD_OPTIONS_SCHEMA,
    maxShare: { ...maxShareSchema, description: `${maxShareSchema.description}; applies with weightFrom "metric" or "load" (reported figures), not to configured weights` },
  },
} as const;

export type WeightedRoundRobinOptions = FromSchema<typeof schema>;

/** The plugin's body: a WeightedRotationPicker per pool (BalancerBody). */
export class WeightedRoundRobin extends BalancerBody<WeightedRotationPicker> {
  constructor(private readonly opts: WeightedRoundRobinOptions) {
    super(PLUGIN_NAME);
  }

  picker(): WeightedRotationPicker {
    // Configured weights are the operator's choice; reported ones are capped (load.ts ShareCap).
    return new WeightedRotationPicker(this.opts, this.opts.weightFrom === 'config' ? 1 : this.opts.maxShare);
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'balancer',
  roles: ['loadbalancer'],
  schema,
  setup: (options) => new WeightedRoundRobin(options),
});
