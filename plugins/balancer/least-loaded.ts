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
import type { BackendView } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import type { Picker, PickResult } from '../../core/balance/picker.ts';
import { Picked, r3 } from '../../core/balance/picker.ts';
import { BalancerBody } from './body.ts';
import { SlotHeap } from '../../core/balance/heap.ts';
import { LOAD_OPTIONS_SCHEMA, pickCostSchema, maxShareSchema, LoadState, ShareCap, type LoadOptions } from './load.ts';

const PLUGIN_NAME = 'least-loaded';

type Opts = LoadOptions & { pickCost: number };

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

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    ...LOAD_OPTIONS_SCHEMA,
    pickCost: pickCostSchema(0.01),
    maxShare: maxShareSchema,
  },
} as const;

export type LeastLoadedOptions = FromSchema<typeof schema>;

/** The plugin's body: a LeastLoadedPicker per pool (BalancerBody). */
export class LeastLoaded extends BalancerBody<LeastLoadedPicker> {
  constructor(private readonly opts: LeastLoadedOptions) {
    super(PLUGIN_NAME);
  }

  picker(): LeastLoadedPicker {
    return new LeastLoadedPicker(this.opts, this.opts.maxShare);
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'balancer',
  roles: ['loadbalancer'],
  schema,
  setup: (options) => new LeastLoaded(options),
});
