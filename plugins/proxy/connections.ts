/**
 * Active proxied connections per backend, shared between the `tcp-proxy` plugin (which counts)
 * and the `least-connections` balancer (which reads), one table per load balancer (keyed by its
 * hooks object, so two load balancers in one process do not mix their counts). Changes are also
 * kept in a short log, so a reader with state of its own (least-connections' heap) re-sorts only
 * the backends whose count moved since it last looked.
 */
import type { CoreLike } from '../../core/plugin/hooks.ts';

/** Changes the log keeps; a reader further behind rebuilds from the counts. */
const LOG_SIZE = 4096;

export class ConnectionCounts {
  private readonly counts = new Map<string, number>();
  private readonly log: string[] = [];
  /** Changes so far (the log's position). */
  changeSeq = 0;

  get(address: string): number {
    return this.counts.get(address) ?? 0;
  }

  add(address: string): void {
    this.counts.set(address, this.get(address) + 1);
    this.note(address);
  }

  remove(address: string): void {
    const n = this.get(address) - 1;
    if (n > 0) this.counts.set(address, n);
    else this.counts.delete(address);
    this.note(address);
  }

  /** Addresses whose count changed since `changeSeq` was `since` (repeats possible), or undefined when the log no longer reaches back that far. */
  changedSince(since: number): string[] | undefined {
    if (this.changeSeq - since > LOG_SIZE) return undefined;
    const out: string[] = [];
    for (let k = since; k < this.changeSeq; k++) out.push(this.log[k % LOG_SIZE]!);
    return out;
  }

  /** Every backend with at least one connection. */
  entries(): Array<[string, number]> {
    return [...this.counts.entries()];
  }

  private note(address: string): void {
    this.log[this.changeSeq % LOG_SIZE] = address;
    this.changeSeq++;
  }
}

const tables = new WeakMap<object, ConnectionCounts>();

/** The connection table of the load balancer `core`. */
export function connectionCounts(core: Pick<CoreLike, 'hooks'>): ConnectionCounts {
  let t = tables.get(core.hooks);
  if (!t) tables.set(core.hooks, (t = new ConnectionCounts()));
  return t;
}
