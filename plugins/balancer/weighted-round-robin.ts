/**
 * weighted-round-robin: smooth weighted rotation (each pick, every server's credit grows by its
 * weight and the richest server is chosen and pays the total), so a 5:1:1 pool gets
 * a a b a c a a, not a a a a a b c. Weights come from the configuration (`servers: [{address,
 * weight}]`), from a metric each server reports, or from its load (weight x (1 - load)); a
 * stale or missing report falls back to the configured weight (load.ts).
 */
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import { withDefaults, type QhcpPlugin } from '../../core/plugin/loader.ts';
import { LOAD_DEFAULTS, LOAD_OPTIONS_SCHEMA, maxShareSchema, ShareCap, loadsOf, reportedLoad, type LoadOptions } from './load.ts';
import { metricNameSchema } from '../../core/protocol/messages.ts';

const PLUGIN_NAME = 'weighted-round-robin';

/** Share of its weight a fully loaded server keeps with `weightFrom: 'load'`. */
const MIN_LOAD_SHARE = 0.01;

export interface WeightedRoundRobinOptions extends Partial<LoadOptions> {
  weightFrom?: 'config' | 'metric' | 'load';
  weightMetric?: string;
  maxShare?: number;
}

export default class WeightedRoundRobinPlugin implements QhcpPlugin {
  static schema = {
    type: 'object',
    additionalProperties: false,
    properties: {
      weightFrom: { enum: ['config', 'metric', 'load'], default: 'config', description: 'where weights come from' },
      weightMetric: { ...metricNameSchema, default: 'weight', description: 'with weightFrom "metric": the reported metric holding the weight' },
      ...LOAD_OPTIONS_SCHEMA,
      maxShare: { ...maxShareSchema, description: `${maxShareSchema.description}; applies with weightFrom "metric" or "load" (reported figures), not to configured weights` },
    },
  };
  readonly name = PLUGIN_NAME;
  readonly family = 'balancer' as const;
  readonly roles = ['loadbalancer' as const];
  private readonly opts: LoadOptions & { weightFrom: 'config' | 'metric' | 'load'; weightMetric: string; maxShare: number };
  private readonly share: ShareCap;
  /** Smooth-WRR credit per server address. */
  private readonly credit = new Map<string, number>();

  constructor(options: WeightedRoundRobinOptions = {}) {
    this.opts = withDefaults(WeightedRoundRobinPlugin.schema, options, 'weighted-round-robin');
    // Configured weights are the operator's choice; reported ones are capped (load.ts ShareCap).
    this.share = new ShareCap(this.opts.weightFrom === 'config' ? 1 : this.opts.maxShare);
  }

  /** The weight of each server for this pick (never negative; all zero means equal). */
  weights(servers: readonly BackendView[], now: number): number[] {
    const o = this.opts;
    let w: number[];
    if (o.weightFrom === 'metric') {
      w = servers.map((s) => {
        const v = reportedLoad(s, now, { maxReportAgeMs: o.maxReportAgeMs, metric: o.weightMetric });
        return v !== undefined && v >= 0 ? v : s.weight;
      });
    } else if (o.weightFrom === 'load') {
      const { loads } = loadsOf(servers, now, o);
      w = servers.map((s, i) => s.weight * Math.max(MIN_LOAD_SHARE, 1 - Math.min(1, loads[i]!)));
    } else {
      w = servers.map((s) => s.weight);
    }
    w = w.map((x) => (Number.isFinite(x) && x > 0 ? x : 0));
    return w.some((x) => x > 0) ? w : w.map(() => 1);
  }

  /** Why the last pick chose its server (PICK_RESPONSE `why`). */
  why = '';

  choose(servers: readonly BackendView[], now: number): BackendView | undefined {
    if (servers.length === 0) return undefined;
    if (this.credit.size > servers.length) {
      const live = new Set(servers.map((s) => s.address));
      for (const k of this.credit.keys()) if (!live.has(k)) this.credit.delete(k);
    }
    const capped = this.share.open(servers);
    const w = this.weights(servers, now).map((x, i) => (capped.length < servers.length && !capped.includes(servers[i]!) ? 0 : x));
    if (!w.some((x) => x > 0)) w.fill(1);
    const total = w.reduce((a, b) => a + b, 0);
    let best = 0;
    let bestCredit = -Infinity;
    servers.forEach((s, i) => {
      const c = (this.credit.get(s.address) ?? 0) + w[i]!;
      this.credit.set(s.address, c);
      if (c > bestCredit) {
        best = i;
        bestCredit = c;
      }
    });
    const chosen = servers[best]!;
    this.credit.set(chosen.address, bestCredit - total);
    this.share.add(chosen);
    this.why = `smooth weighted rotation, weight ${Math.round(w[best]! * 1000) / 1000} of total ${Math.round(total * 1000) / 1000}`;
    return chosen;
  }

  apply(core: CoreLike): void {
    core.hooks.pick.tap(PLUGIN_NAME, (req) => {
      const chosen = this.choose(req.servers, req.now);
      if (chosen) req.explain?.(this.why);
      return chosen;
    });
  }
}
