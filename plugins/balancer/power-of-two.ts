/**
 * power-of-two: two distinct UP servers chosen at random, the less loaded of the two wins (a tie
 * is decided at random). Randomness keeps it from herding onto one idle-looking server even
 * with stale reports; the most loaded server is never picked while it has a peer.
 * Stale reports count as unknown load (load.ts).
 */
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import { withDefaults, type QhcpPlugin } from '../../core/plugin/loader.ts';
import { LOAD_DEFAULTS, LOAD_OPTIONS_SCHEMA, pickCostSchema, maxShareSchema, PicksSinceReport, ShareCap, loadsOf, type LoadOptions } from './load.ts';

const PLUGIN_NAME = 'power-of-two';

export interface PowerOfTwoOptions extends Partial<LoadOptions> {
  pickCost?: number;
  maxShare?: number;
}

export default class PowerOfTwoPlugin implements QhcpPlugin {
  static schema = {
    type: 'object',
    additionalProperties: false,
    properties: {
      ...LOAD_OPTIONS_SCHEMA,
      pickCost: pickCostSchema(0),
      maxShare: maxShareSchema,
    },
  };
  readonly name = PLUGIN_NAME;
  readonly family = 'balancer' as const;
  readonly roles = ['loadbalancer' as const];
  private readonly opts: LoadOptions & { pickCost: number; maxShare: number };
  private readonly picks = new PicksSinceReport();
  private readonly share: ShareCap;

  /** `random` returns [0, 1) like Math.random (tests pass a seeded one). */
  constructor(
    options: PowerOfTwoOptions = {},
    private readonly random: () => number = Math.random,
  ) {
    this.opts = withDefaults(PowerOfTwoPlugin.schema, options, 'power-of-two');
    this.share = new ShareCap(this.opts.maxShare);
  }

  /** Why the last pick chose its server (PICK_RESPONSE `why`). */
  why = '';

  choose(servers: readonly BackendView[], now: number): BackendView | undefined {
    const n = servers.length;
    if (n === 0) return undefined;
    if (n === 1) {
      this.why = 'the only one';
      return servers[0];
    }
    this.picks.prune(servers);
    const a = Math.floor(this.random() * n) % n;
    // A second index drawn from the other n-1, so the two are always distinct.
    const b = (a + 1 + (Math.floor(this.random() * (n - 1)) % (n - 1))) % n;
    // Loads of the whole pool, so an unknown one is filled with the pool's mean, not the pair's.
    const { loads } = loadsOf(servers, now, this.opts);
    const la = loads[a]! + this.opts.pickCost * this.picks.get(servers[a]!);
    const lb = loads[b]! + this.opts.pickCost * this.picks.get(servers[b]!);
    let chosen = servers[la < lb ? a : lb < la ? b : this.random() < 0.5 ? a : b]!;
    // The pair's winner at its share cap gives way to the least loaded server not at its cap
    // (load.ts ShareCap), so the cap never sends a pick to the most loaded one needlessly.
    if (this.share.full(chosen, n)) {
      let best: number | undefined;
      servers.forEach((s, i) => {
        if (!this.share.full(s, n) && (best === undefined || loads[i]! < loads[best]!)) best = i;
      });
      if (best !== undefined) chosen = servers[best]!;
    }
    const r = (x: number) => Math.round(x * 1000) / 1000;
    const won = chosen === servers[a] ? la : chosen === servers[b] ? lb : undefined;
    this.why =
      won === undefined
        ? 'the pair at its share cap: least loaded below the cap'
        : la === lb
          ? `two sampled, equal load ${r(la)}, coin toss`
          : `lower load of two sampled: ${r(Math.min(la, lb))} vs ${r(Math.max(la, lb))}`;
    if (this.opts.pickCost > 0) this.picks.add(chosen);
    this.share.add(chosen);
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
