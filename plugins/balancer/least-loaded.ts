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
import { HookedPicker, Picked, r3 } from '../../core/balance/picker.ts';
import { SlotHeap } from '../../core/balance/heap.ts';
import { LOAD_OPTIONS_SCHEMA, pickCostSchema, maxShareSchema, LoadState, ShareCap, type LoadOptions } from './load.ts';

const PLUGIN_NAME = 'least-loaded';

export interface LeastLoadedOptions extends Partial<LoadOptions> {
  pickCost?: number;
  maxShare?: number;
}
type Opts = LoadOptions & { pickCost: number; maxShare: number };

/** Loads closer than this are a tie. */
const TIE = 1e-12;
const WHY = (load: number) => `lowest load ${r3(load)}`;

export class LeastLoadedPicker implements Picker {
  private readonly state = new LoadState();
  /** When each server was last picked (a pick counter; never-picked ones in configuration order before all). */
  private lastPicked: number[] = [];
  private picked = 0;
  /** Each slot's load + herd cost, kept in step with its picks (read by the heap's comparison). */
  private effs = new Float64Array(0);
  private readonly heap = new SlotHeap((a, b) => {
    const ea = this.effs[a]!;
    const eb = this.effs[b]!;
    return ea < eb - TIE || (ea <= eb + TIE && this.lastPicked[a]! < this.lastPicked[b]!);
  });

  /** Servers at their share cap are out of the heap until a pick of theirs leaves the window (load.ts). */
  private readonly cap: ShareCap;

  constructor(
    private readonly o: Opts,
    maxShare: number,
  ) {
    this.cap = new ShareCap(
      maxShare,
      (i) => this.heap.remove(i),
      (i) => this.heap.push(i),
    );
  }

  private eff(i: number): number {
    return this.state.loads[i]! + this.o.pickCost * this.state.picks[i]!;
  }

  update(servers: readonly BackendView[], now: number): void {
    const before = new Map<string, number>();
    this.state.servers.forEach((s, i) => before.set(s.address, this.lastPicked[i]!));
    this.state.update(servers, now, this.o);
    const n = servers.length;
    this.lastPicked = servers.map((s, i) => before.get(s.address) ?? i - n - this.picked - 1);
    this.effs = Float64Array.from(servers.keys(), (i) => this.eff(i));
    this.heap.reset(servers.keys(), n);
    this.cap.reset(servers);
  }

  pick(_key: string | undefined, now: number): PickResult | undefined {
    const servers = this.state.servers;
    const n = servers.length;
    if (n === 0) return undefined;
    if (this.state.stale(now)) this.update(servers, now);
    let i = this.heap.peek();
    // Every server at its cap cannot happen with two or more (load.ts ShareCap); then the least loaded.
    if (i < 0) for (let j = 0; j < n; j++) if (i < 0 || this.eff(j) < this.eff(i)) i = j;
    const load = this.eff(i);
    this.state.picks[i]!++;
    this.effs[i] = this.eff(i);
    this.lastPicked[i] = ++this.picked;
    // The cap first: a server it parks leaves the heap, so it needs no re-sort.
    this.cap.picked(i);
    if (this.heap.has(i)) this.heap.fix(i);
    return new Picked(servers[i]!, WHY, load);
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
  private readonly hooked: HookedPicker<LeastLoadedPicker>;

  constructor(options: LeastLoadedOptions = {}) {
    this.opts = withDefaults(LeastLoadedPlugin.schema, options, 'least-loaded');
    this.hooked = new HookedPicker(this.picker());
  }

  /** State of its own for one pool (LocalBalancer). */
  picker(): LeastLoadedPicker {
    return new LeastLoadedPicker(this.opts, this.opts.maxShare);
  }

  /** Why the last pick chose its server (PICK_RESPONSE `why`). */
  why = '';

  /** One pick on the `pick` hook's path (HookedPicker: the pool is read again when it comes as another array). */
  choose(servers: readonly BackendView[], now: number): BackendView | undefined {
    const r = this.hooked.pick(servers, now);
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
