/**
 * least-loaded: the UP server with the lowest load (loadScore by default). Ties rotate, so equal
 * servers share picks evenly. Herd guard: every pick sent to a server since its last report adds
 * `pickCost` to its load, so the server that looked idle in the last report takes picks only
 * until it looks as loaded as the next one, not all of them until the next report.
 * Stale reports (older than `maxReportAgeMs`) count as unknown load (load.ts).
 */
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import { withDefaults, type QhcpPlugin } from '../../core/plugin/loader.ts';
import { LOAD_DEFAULTS, LOAD_OPTIONS_SCHEMA, pickCostSchema, maxShareSchema, PicksSinceReport, ShareCap, loadsOf, type LoadOptions } from './load.ts';

const PLUGIN_NAME = 'least-loaded';

export interface LeastLoadedOptions extends Partial<LoadOptions> {
  pickCost?: number;
  maxShare?: number;
}

export default class LeastLoadedPlugin implements QhcpPlugin {
  static schema = {
    type: 'object',
    additionalProperties: false,
    properties: {
      ...LOAD_OPTIONS_SCHEMA,
      pickCost: pickCostSchema(0.01),
      maxShare: maxShareSchema,
    },
  };
  readonly name = PLUGIN_NAME;
  readonly family = 'balancer' as const;
  readonly roles = ['loadbalancer' as const];
  private readonly opts: LoadOptions & { pickCost: number; maxShare: number };
  private readonly picks = new PicksSinceReport();
  private readonly share: ShareCap;
  /** The address picked last, where the search among ties starts. */
  private last: string | undefined;

  constructor(options: LeastLoadedOptions = {}) {
    this.opts = withDefaults(LeastLoadedPlugin.schema, options, 'least-loaded');
    this.share = new ShareCap(this.opts.maxShare);
  }

  /** Why the last pick chose its server (PICK_RESPONSE `why`). */
  why = '';

  choose(servers: readonly BackendView[], now: number): BackendView | undefined {
    const n = servers.length;
    if (n === 0) return undefined;
    this.picks.prune(servers);
    const { loads } = loadsOf(servers, now, this.opts);
    // A server at its share cap is passed over while another is offered (load.ts ShareCap).
    const open = new Set(this.share.open(servers));
    const eff = servers.map((s, i) => (open.has(s) ? loads[i]! + this.opts.pickCost * this.picks.get(s) : Infinity));
    const min = Math.min(...eff);
    // Ties rotate: the first tied server after the one picked last, in configuration order.
    const lastAt = this.last === undefined ? -1 : servers.findIndex((s) => s.address === this.last);
    let best = -1;
    for (let k = 1; k <= n && best < 0; k++) {
      const i = (lastAt + k + n) % n;
      if (eff[i]! <= min + 1e-12) best = i;
    }
    const chosen = servers[best]!;
    this.last = chosen.address;
    this.picks.add(chosen);
    this.share.add(chosen);
    this.why = `lowest load ${Math.round(eff[best]! * 1000) / 1000}`;
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
