/**
 * least-connections: the server with the fewest active proxied connections (counted by the
 * `tcp-proxy` plugin, plugins/proxy/connections.ts), divided by the server's weight when
 * `weighted` is on. Ties rotate in configuration order, so equal servers share new connections
 * evenly (and a load balancer without tcp-proxy, where every count is 0, rotates like
 * round-robin).
 */
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import type { QhcpPlugin } from '../../core/plugin/loader.ts';
import { connectionCounts, type ConnectionCounts } from '../proxy/connections.ts';

const PLUGIN_NAME = 'least-connections';

export default class LeastConnectionsPlugin implements QhcpPlugin {
  static schema = {
    type: 'object',
    additionalProperties: false,
    properties: {
      weighted: { type: 'boolean', default: false, description: 'compare connections / weight instead of connections' },
    },
  };
  readonly name = PLUGIN_NAME;
  readonly family = 'balancer' as const;
  readonly roles = ['loadbalancer' as const];
  private counts: ConnectionCounts | undefined;
  private last: string | undefined;

  constructor(private readonly options: { weighted?: boolean } = {}) {}

  choose(servers: readonly BackendView[], counts: ConnectionCounts): BackendView | undefined {
    const n = servers.length;
    if (n === 0) return undefined;
    const score = servers.map((s) => {
      const c = counts.get(s.address);
      if (!this.options.weighted) return c;
      const w = typeof s.weight === 'number' && s.weight > 0 ? s.weight : 1;
      return (c + 1) / w;
    });
    const min = Math.min(...score);
    const lastAt = this.last === undefined ? -1 : servers.findIndex((s) => s.address === this.last);
    let best = 0;
    for (let k = 1; k <= n; k++) {
      const i = (lastAt + k + n) % n;
      if (score[i]! <= min + 1e-12) {
        best = i;
        break;
      }
    }
    this.last = servers[best]!.address;
    return servers[best];
  }

  apply(core: CoreLike): void {
    this.counts = connectionCounts(core);
    core.hooks.pick.tap(PLUGIN_NAME, (req) => this.choose(req.servers, this.counts!));
  }
}
