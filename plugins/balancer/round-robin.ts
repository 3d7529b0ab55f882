/**
 * round-robin: a fair rotation over the UP servers, ignoring load. The rotation follows
 * configuration order; when the server picked last is no longer UP, it continues with the next
 * one after it in the order seen at that pick, so a server going DOWN or coming back does not
 * restart the rotation or give anyone a double turn.
 */
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import type { QhcpPlugin } from '../../core/plugin/loader.ts';

const PLUGIN_NAME = 'round-robin';

export default class RoundRobinPlugin implements QhcpPlugin {
  static schema = { type: 'object', additionalProperties: false, properties: {} };
  readonly name = PLUGIN_NAME;
  readonly family = 'balancer' as const;
  readonly roles = ['loadbalancer' as const];
  private last: string | undefined;
  /** The pool (addresses, in order) at the last pick. */
  private order: string[] = [];

  constructor(_options: Record<string, unknown> = {}) {}

  /** The UP server after the last one picked. */
  choose(servers: readonly BackendView[]): BackendView | undefined {
    if (servers.length === 0) return undefined;
    let next: BackendView | undefined;
    const i = this.last === undefined ? -1 : servers.findIndex((s) => s.address === this.last);
    if (i >= 0) next = servers[(i + 1) % servers.length];
    else if (this.last !== undefined) {
      // The last pick left the pool: walk on from where it stood in the previous pool.
      const at = this.order.indexOf(this.last);
      const offered = new Map(servers.map((s) => [s.address, s]));
      for (let k = 1; k <= this.order.length && !next; k++) next = offered.get(this.order[(at + k) % this.order.length]!);
    }
    next ??= servers[0]!;
    this.last = next.address;
    if (this.order.length !== servers.length || this.order.some((a, j) => a !== servers[j]!.address)) this.order = servers.map((s) => s.address);
    return next;
  }

  apply(core: CoreLike): void {
    core.hooks.pick.tap(PLUGIN_NAME, (req) => {
      const chosen = this.choose(req.servers);
      if (chosen) req.explain?.('next in rotation');
      return chosen;
    });
  }
}
