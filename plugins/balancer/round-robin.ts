/**
 * round-robin: a fair rotation over the UP servers, ignoring load. The rotation follows
 * configuration order; when the server picked last is no longer UP, it continues with the next
 * one after it in the order seen at that pick, so a server going DOWN or coming back does not
 * restart the rotation or give anyone a double turn. O(1) per pick (RotationPicker), O(N) per
 * change of the pool.
 */
import type { BackendView } from '../../core/plugin/hooks.ts';
import type { Picker, PickResult } from '../../core/balance/picker.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import { BalancerBody } from './body.ts';

const PLUGIN_NAME = 'round-robin';

/** The rotation's state: the pool, a cursor on the server picked next, the one picked last. */
export class RotationPicker implements Picker {
  private servers: readonly BackendView[] = [];
  private cursor = 0;
  private last: string | undefined;

  update(servers: readonly BackendView[]): void {
    const old = this.servers;
    const next = old.length > 0 ? old[this.cursor % old.length]!.address : undefined;
    const pos = new Map<string, number>();
    servers.forEach((s, i) => pos.set(s.address, i));
    this.servers = servers;
    this.cursor = 0;
    if (this.last === undefined || servers.length === 0) return;
    const at = pos.get(this.last);
    if (at !== undefined) {
      this.cursor = (at + 1) % servers.length;
      return;
    }
    // The last pick left the pool: walk on from the server that was due next in the old pool.
    const from = next === undefined ? -1 : old.findIndex((s) => s.address === next);
    for (let k = 0; k < old.length; k++) {
      const j = pos.get(old[(from + k + old.length) % old.length]!.address);
      if (j !== undefined) {
        this.cursor = j;
        return;
      }
    }
  }

  pick(): PickResult | undefined {
    const n = this.servers.length;
    if (n === 0) return undefined;
    const s = this.servers[this.cursor]!;
    this.cursor = (this.cursor + 1) % n;
    this.last = s.address;
    return { server: s, why: 'next in rotation' };
  }
}

/** The plugin's body: a rotation per pool (BalancerBody). */
export class RoundRobin extends BalancerBody<RotationPicker> {
  picker(): RotationPicker {
    return new RotationPicker();
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'balancer',
  roles: ['loadbalancer'],
  schema: { type: 'object', additionalProperties: false, properties: {} },
  setup: () => new RoundRobin(PLUGIN_NAME),
});
