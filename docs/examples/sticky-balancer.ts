/**
 * sticky: an example custom balancer (walked through in docs/plugins.md).
 *
 * PICKs that carry a key (`qhcp pick --key user-42`) go to the same server for as long as it
 * is UP, by rendezvous hashing: each (key, server) pair gets a score and the highest wins, so
 * when a server leaves only the keys it held move, and they come back when it returns. A
 * server whose reported `metric` is above `maxLoad` is passed over (its keys spill to their
 * next choice). PICKs without a key are left to the next balancer in the list (answer
 * `undefined`), e.g. round-robin:
 *
 *   plugins: [['./docs/examples/sticky-balancer.ts', { metric: 'queueLength', maxLoad: 100 }], 'round-robin']
 */
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import type { QhcpPlugin } from '../../core/plugin/loader.ts';

const PLUGIN_NAME = 'sticky';

export interface StickyOptions {
  /** A metric the servers report; with `maxLoad`, servers above it are passed over. */
  metric?: string;
  maxLoad?: number;
}

/** FNV-1a, 32 bits: a fast, well-spread hash of short strings. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** Weighted rendezvous score: higher wins; a weight-2 server wins twice as many keys. */
export function score(key: string, server: BackendView): number {
  const u = (fnv1a(`${key}\u0000${server.address}`) + 0.5) / 2 ** 32; // in (0, 1)
  return server.weight / -Math.log(u);
}

export default class StickyBalancerPlugin implements QhcpPlugin {
  static schema = {
    type: 'object',
    additionalProperties: false,
    properties: {
      metric: { type: 'string', minLength: 1 },
      maxLoad: { type: 'number' },
    },
    // A limit needs a metric to compare with, and the other way round.
    dependencies: { maxLoad: ['metric'], metric: ['maxLoad'] },
  };

  readonly name = PLUGIN_NAME;
  readonly family = 'balancer' as const;
  readonly roles = ['loadbalancer' as const];
  /** Servers that left (DOWN/DRAINING) since they were last UP: their keys have moved. */
  readonly away = new Set<string>();

  constructor(private readonly options: StickyOptions = {}) {}

  /** The UP server with the highest score for `key` that is not over the load limit. */
  choose(servers: readonly BackendView[], key: string): BackendView | undefined {
    const { metric, maxLoad } = this.options;
    let best: BackendView | undefined;
    let bestScore = -Infinity;
    for (const s of servers) {
      const load = metric !== undefined ? s.metrics[metric] : undefined;
      if (maxLoad !== undefined && load !== undefined && load > maxLoad) continue;
      const sc = score(key, s);
      if (sc > bestScore) [best, bestScore] = [s, sc];
    }
    return best;
  }

  apply(core: CoreLike): void {
    // First answer wins: return undefined to let the next balancer answer.
    core.hooks.pick.tap(PLUGIN_NAME, (req) => (req.key === undefined ? undefined : this.choose(req.servers, req.key)));
    // Learn of state changes: say once when a server's keys move away and when they come back.
    core.hooks.transition.tap(PLUGIN_NAME, (t) => {
      if (t.to === 'UP' && this.away.delete(t.server)) core.logger.info('sticky: keys return to server', { server: t.server });
      else if (t.from === 'UP' && t.to !== 'UP') {
        this.away.add(t.server);
        core.logger.info('sticky: keys of server move to their next choice', { server: t.server, reason: t.reason });
      }
    });
  }
}
