/**
 * power-of-two: two distinct UP servers chosen at random, the less loaded of the two wins (a tie
 * is decided at random). Randomness keeps it from herding onto one idle-looking server even
 * with stale reports; the most loaded server is never picked while it has a peer.
 * Stale reports count as unknown load (load.ts). O(1) per pick from loads read when the pool or
 * a report changes (O(N log N) then, for the share cap's fallback order).
 */
import type { BackendView } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import type { Picker, PickResult } from '../../core/balance/picker.ts';
import { Picked, r3 } from '../../core/balance/picker.ts';
import { BalancerBody } from './body.ts';
import { LOAD_OPTIONS_SCHEMA, pickCostSchema, maxShareSchema, LoadState, ShareCap, type LoadOptions } from './load.ts';
import { SlotHeap } from '../../core/balance/heap.ts';

const PLUGIN_NAME = 'power-of-two';
const WHY = (x: number, y: number) => (x === y ? `two sampled, equal load ${r3(x)}, coin toss` : `lower load of two sampled: ${r3(Math.min(x, y))} vs ${r3(Math.max(x, y))}`);
const CAPPED = () => 'the pair at its share cap: least loaded below the cap';

type Opts = LoadOptions & { pickCost: number };

export class PowerOfTwoPicker implements Picker {
  private readonly state = new LoadState();
  /** Servers below their share cap, least loaded first: where a capped pair's pick goes instead. */
  private readonly open = new SlotHeap((a, b) => this.state.loads[a]! < this.state.loads[b]! || (this.state.loads[a] === this.state.loads[b] && a < b));
  private readonly cap: ShareCap;

  constructor(
    private readonly o: Opts,
    maxShare: number,
    private readonly random: () => number,
  ) {
    this.cap = new ShareCap(
      maxShare,
      (i) => this.open.remove(i),
      (i) => this.open.push(i),
    );
  }

  update(servers: readonly BackendView[], now: number): void {
    this.state.update(servers, now, this.o);
    this.open.reset(servers.keys(), servers.length);
    this.cap.reset(servers);
  }

  pick(_key: string | undefined, now: number): PickResult | undefined {
    const servers = this.state.servers;
    const n = servers.length;
    if (n === 0) return undefined;
    if (n === 1) return { server: servers[0]!, why: 'the only one' };
    if (this.state.stale(now)) this.update(servers, now);
    const { loads, picks } = this.state;
    const a = Math.floor(this.random() * n) % n;
    // A second index drawn from the other n-1, so the two are always distinct.
    const b = (a + 1 + (Math.floor(this.random() * (n - 1)) % (n - 1))) % n;
    // Loads of the whole pool (LoadState), so an unknown one is filled with the pool's mean, not the pair's.
    const la = loads[a]! + this.o.pickCost * picks[a]!;
    const lb = loads[b]! + this.o.pickCost * picks[b]!;
    let i = la < lb ? a : lb < la ? b : this.random() < 0.5 ? a : b;
    let why = WHY;
    // The pair's winner at its share cap gives way to the least loaded server not at its cap
    // (load.ts ShareCap), so the cap never sends a pick to the most loaded one needlessly.
    if (this.cap.full(i)) {
      const open = this.open.peek();
      if (open >= 0) {
        if (open !== a && open !== b) why = CAPPED;
        i = open;
      }
    }
    if (this.o.pickCost > 0) picks[i]!++;
    this.cap.picked(i);
    return new Picked(servers[i]!, why, la, lb);
  }
}

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    ...LOAD_OPTIONS_SCHEMA,
    pickCost: pickCostSchema(0),
    maxShare: maxShareSchema,
  },
} as const;

export type PowerOfTwoOptions = FromSchema<typeof schema>;

/** The plugin's body: a PowerOfTwoPicker per pool (BalancerBody). */
export class PowerOfTwo extends BalancerBody<PowerOfTwoPicker> {
  /** Returns [0, 1) like Math.random; set before the first pick (tests set a seeded one). */
  random: () => number = Math.random;

  constructor(private readonly opts: PowerOfTwoOptions) {
    super(PLUGIN_NAME);
  }

  /** O(1) per pick. */
  picker(): PowerOfTwoPicker {
    return new PowerOfTwoPicker(this.opts, this.opts.maxShare, this.random);
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'balancer',
  roles: ['loadbalancer'],
  schema,
  setup: (options) => new PowerOfTwo(options),
});
