/**
 * Active proxied connections per backend, shared between the `tcp-proxy` plugin (which counts)
 * and the `least-connections` balancer (which reads), one table per load balancer (keyed by its
 * hooks object, so two load balancers in one process do not mix their counts).
 */
import type { CoreLike } from '../../core/plugin/hooks.ts';

export class ConnectionCounts {
  private readonly counts = new Map<string, number>();

  get(address: string): number {
    return this.counts.get(address) ?? 0;
  }

  add(address: string): void {
    this.counts.set(address, this.get(address) + 1);
  }

  remove(address: string): void {
    const n = this.get(address) - 1;
    if (n > 0) this.counts.set(address, n);
    else this.counts.delete(address);
  }

  /** Every backend with at least one connection. */
  entries(): Array<[string, number]> {
    return [...this.counts.entries()];
  }
}

const tables = new WeakMap<object, ConnectionCounts>();

/** The connection table of the load balancer `core`. */
export function connectionCounts(core: Pick<CoreLike, 'hooks'>): ConnectionCounts {
  let t = tables.get(core.hooks);
  if (!t) tables.set(core.hooks, (t = new ConnectionCounts()));
  return t;
}
