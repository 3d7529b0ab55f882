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
 *   plugins: [['./sticky-balancer.ts', { metric: 'queueLength', maxLoad: 100 }], 'round-robin']
 */
import { definePlugin, type BackendView } from 'qhcp';

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

/** The UP server with the highest score for `key` that is not over the load limit. */
export function choose(servers: readonly BackendView[], key: string, metric?: string, maxLoad?: number): BackendView | undefined {
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

export default definePlugin({
  name: 'sticky',
  family: 'balancer',
  roles: ['loadbalancer'],
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      /** A metric the servers report; with `maxLoad`, servers above it are passed over. */
      metric: { type: 'string', minLength: 1 },
      maxLoad: { type: 'number' },
    },
    // A limit needs a metric to compare with, and the other way round.
    dependencies: { maxLoad: ['metric'], metric: ['maxLoad'] },
  },
  apply(core, { metric, maxLoad }) {
    /** Servers that left (DOWN/DRAINING) since they were last UP: their keys have moved. */
    const away = new Set<string>();
    // First answer wins: return undefined to let the next balancer answer.
    core.hooks.pick.tap('sticky', (req) => (req.key === undefined ? undefined : choose(req.servers, req.key, metric, maxLoad)));
    // Learn of state changes: say once when a server's keys move away and when they come back.
    core.hooks.transition.tap('sticky', (t) => {
      if (t.to === 'UP' && away.delete(t.server)) core.logger.info('sticky: keys return to server', { server: t.server });
      else if (t.from === 'UP' && t.to !== 'UP') {
        away.add(t.server);
        core.logger.info('sticky: keys of server move to their next choice', { server: t.server, reason: t.reason });
      }
    });
  },
});
