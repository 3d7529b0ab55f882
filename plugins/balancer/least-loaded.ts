/**
 * least-loaded: the UP server with the lowest load (loadScore by default). Ties rotate (the
 * tied server picked longest ago first; configuration order at first), so equal servers share
 * picks evenly. Herd guard: every pick sent to a server since its last report adds `pickCost`
 * to its load, so the server that looked idle in the last report takes picks only until it
 * looks as loaded as the next one, not all of them until the next report.
 * Stale reports (older than `maxReportAgeMs`) count as unknown load (load.ts).
 * O(log N) per pick: the servers sit in a heap by (load + pickCost x picks, last picked),
 * rebuilt (O(N)) when the pool or a report changes.
 */
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import { withDefaults, type QhcpPlugin } from '../../core/plugin/loader.ts';
import type { Picker, PickResult } from '../../core/balance/picker.ts';
import { r3 } from '../../core/balance/picker.ts';
import { SlotHeap } from '../../core/balance/heap.ts';
import { LOAD_OPTIONS_SCHEMA, pickCostSchema, maxShareSchema, LoadState, ShareCap, SHARE_WINDOW, type LoadOptions } from './load.ts';

const PLUGIN_NAME = 'least-loaded';

export interface LeastLoadedOptions extends Partial<LoadOptions> {
  pickCost?: number;
  maxShare?: number;
}
type Opts = LoadOptions & { pickCost: number; maxShare: number };

/** Loads closer than this are a tie. */
const TIE = 1e-12;

export class LeastLoadedPicker implements Picker {
  private readonly state = new LoadState();
  /** When each server was last picked (a pick counter; never-picked ones in configuration order before all). */
  private lastPicked: number[] = [];
  private picked = 0;
  private readonly heap = new SlotHeap((a, b) => {
    const ea = this.eff(a);
    const eb = this.eff(b);
    return ea < eb - TIE || (ea <= eb + TIE && this.lastPicked[a]! < this.lastPicked[b]!);
  });

  constructor(
    private readonly o: Opts,
    private readonly share: ShareCap,
  ) {}

  private eff(i: number): number {
    return this.state.loads[i]! + this.o.pickCost * this.state.picks[i]!;
  }

  update(servers: readonly BackendView[], now: number): void {
    const before = new Map<string, number>();
    this.state.servers.forEach((s, i) => before.set(s.address, this.lastPicked[i]!));
    this.state.update(servers, now, this.o);
    const n = servers.length;
    this.lastPicked = servers.map((s, i) => before.get(s.address) ?? i - n - this.picked - 1);
    this.heap.reset(servers.keys(), n);
  }

  pick(_key: string | undefined, now: number): PickResult | undefined {
    const servers = this.state.servers;
    const n = servers.length;
    if (n === 0) return undefined;
    if (this.state.stale(now)) this.update(servers, now);
    // A server at its share cap is passed over while another is offered (load.ts ShareCap).
    const aside: number[] = [];
    let i = this.heap.peek();
    while (this.share.full(servers[i]!, n) && aside.length < Math.min(n - 1, SHARE_WINDOW)) {
      aside.push(this.heap.pop());
      i = this.heap.peek();
    }
    if (this.share.full(servers[i]!, n)) i = aside[0] ?? i;
    const why = `lowest load ${r3(this.eff(i))}`;
    this.state.picks[i]!++;
    this.lastPicked[i] = ++this.picked;
    this.heap.fix(i);
    for (const j of aside) this.heap.push(j);
    this.share.add(servers[i]!);
    return { server: servers[i]!, why };
  }
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
  private readonly opts: Opts;
  /** The state behind the `pick` hook (callers that pass the pool each time). */
  private readonly hooked: LeastLoadedPicker;

  constructor(options: LeastLoadedOptions = {}) {
    this.opts = withDefaults(LeastLoadedPlugin.schema, options, 'least-loaded');
    this.hooked = this.picker();
  }

  /** State of its own for one pool (LocalBalancer). */
  picker(): LeastLoadedPicker {
    return new LeastLoadedPicker(this.opts, new ShareCap(this.opts.maxShare));
  }

  /** Why the last pick chose its server (PICK_RESPONSE `why`). */
  why = '';

  /** One pick with the pool read each time (O(N)): the `pick` hook's path. */
  choose(servers: readonly BackendView[], now: number): BackendView | undefined {
    this.hooked.update(servers, now);
    const r = this.hooked.pick(undefined, now);
    this.why = r?.why ?? '';
    return r?.server;
  }

  apply(core: CoreLike): void {
    core.hooks.pick.tap(PLUGIN_NAME, (req) => {
      const chosen = this.choose(req.servers, req.now);
      if (chosen) req.explain?.(this.why);
      return chosen;
    });
  }
}
