/**
 * round-robin: a fair rotation over the UP servers. The cursor walks configuration order, so a
 * server that comes back UP rejoins in its place instead of restarting the rotation.
 */
import type { BackendView, CoreLike } from '../../core/hooks.ts';
import type { QhcpPlugin } from '../../core/plugins.ts';

const PLUGIN_NAME = 'round-robin';

export default class RoundRobinPlugin implements QhcpPlugin {
  static schema = { type: 'object', additionalProperties: false, properties: {} };
  readonly name = PLUGIN_NAME;
  readonly family = 'balancer' as const;
  readonly roles = ['loadbalancer' as const];
  private last: string | undefined;

  constructor(_options: Record<string, unknown> = {}) {}

  /** The UP server after the last one picked, in configuration order. */
  choose(servers: readonly BackendView[]): BackendView | undefined {
    if (servers.length === 0) return undefined;
    const i = this.last === undefined ? -1 : servers.findIndex((s) => s.address === this.last);
    // The last pick may have gone DOWN: continue after its position by address order.
    let next = i >= 0 ? servers[(i + 1) % servers.length]! : (servers.find((s) => this.last !== undefined && s.address > this.last) ?? servers[0]!);
    this.last = next.address;
    return next;
  }

  apply(core: CoreLike): void {
    core.hooks.pick.tap(PLUGIN_NAME, (req) => this.choose(req.servers));
  }
}
