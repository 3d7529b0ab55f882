/**
 * least-connections: the server with the fewest active proxied connections (counted by the
 * `tcp-proxy` plugin, plugins/proxy/connections.ts), divided by the server's weight when
 * `weighted` is on. Ties rotate (the tied server picked longest ago first; configuration order
 * at first), so equal servers share new connections evenly (and a load balancer without
 * tcp-proxy, where every count is 0, rotates like round-robin).
 * O(log N) per pick: the servers sit in a heap by (score, last picked); a connection opening or
 * closing moves only its server (the counts' change log), a pool change rebuilds it (O(N)).
 */
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import type { Picker, PickResult } from '../../core/balance/picker.ts';
import { Picked, r3 } from '../../core/balance/picker.ts';
import { BalancerBody } from './body.ts';
import { SlotHeap } from '../../core/balance/heap.ts';
import { connectionCounts, ConnectionCounts } from '../proxy/connections.ts';

const PLUGIN_NAME = 'least-connections';
const WHY = (score: number) => `fewest connections ${score}`;
const WHY_WEIGHTED = (score: number) => `fewest connections per weight ${r3(score)}`;

export class LeastConnectionsPicker implements Picker {
  private servers: readonly BackendView[] = [];
  private slot = new Map<string, number>();
  private weights: number[] = [];
  private lastPicked: number[] = [];
  private picked = 0;
  /** The counts' changeSeq the heap reflects. */
  private seen = 0;
  /** Each slot's score as of the counts the heap reflects (read by the heap's comparison, no map lookups). */
  private scores = new Float64Array(0);
  private readonly heap = new SlotHeap((a, b) => {
    const sa = this.scores[a]!;
    const sb = this.scores[b]!;
    return sa < sb - 1e-12 || (sa <= sb + 1e-12 && this.lastPicked[a]! < this.lastPicked[b]!);
  });

  constructor(
    private readonly counts: ConnectionCounts,
    private readonly weighted: boolean,
  ) {}

  private score(i: number): number {
    const c = this.counts.get(this.servers[i]!.address);
    return this.weighted ? (c + 1) / this.weights[i]! : c;
  }

  update(servers: readonly BackendView[]): void {
    const before = new Map<string, number>();
    this.servers.forEach((s, i) => before.set(s.address, this.lastPicked[i]!));
    const n = servers.length;
    this.servers = servers;
    this.slot = new Map(servers.map((s, i) => [s.address, i]));
    this.weights = servers.map((s) => (typeof s.weight === 'number' && s.weight > 0 ? s.weight : 1));
    this.lastPicked = servers.map((s, i) => before.get(s.address) ?? i - n - this.picked - 1);
    this.seen = this.counts.changeSeq;
    this.scores = Float64Array.from(servers.keys(), (i) => this.score(i));
    this.heap.reset(servers.keys(), n);
  }

  pick(): PickResult | undefined {
    if (this.servers.length === 0) return undefined;
    if (this.seen !== this.counts.changeSeq) {
      const moved = this.counts.changedSince(this.seen);
      if (moved === undefined) {
        this.scores = Float64Array.from(this.servers.keys(), (i) => this.score(i));
        this.heap.reset(this.servers.keys(), this.servers.length);
      } else {
        for (const a of moved) {
          const i = this.slot.get(a);
          if (i === undefined) continue;
          this.scores[i] = this.score(i);
          this.heap.fix(i);
        }
      }
      this.seen = this.counts.changeSeq;
    }
    const i = this.heap.peek();
    const s = this.servers[i]!;
    const score = this.scores[i]!;
    this.lastPicked[i] = ++this.picked;
    this.heap.fix(i);
    return new Picked(s, this.weighted ? WHY_WEIGHTED : WHY, score);
  }
}

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    weighted: { type: 'boolean', default: false, description: 'compare connections / weight instead of connections' },
  },
} as const;

export type LeastConnectionsOptions = FromSchema<typeof schema>;

/** The plugin's body: a LeastConnectionsPicker per pool over the load balancer's connection counts (BalancerBody). */
export class LeastConnections extends BalancerBody<LeastConnectionsPicker> {
  /** The load balancer's table once applied; a table of its own (all zero) before, e.g. in a client. */
  private counts = new ConnectionCounts();

  constructor(private readonly opts: LeastConnectionsOptions) {
    super(PLUGIN_NAME);
  }

  picker(): LeastConnectionsPicker {
    return new LeastConnectionsPicker(this.counts, this.opts.weighted);
  }

  override apply(core: CoreLike): void {
    this.counts = connectionCounts(core);
    this.forgetHooked();
    super.apply(core);
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'balancer',
  roles: ['loadbalancer'],
  schema,
  setup: (options) => new LeastConnections(options),
});
