/**
 * Watches a load balancer through its query port: one long-lived STATUS session polled every
 * few tens of ms, every snapshot kept, so a test can check the whole path of a state change
 * (failures climbing 1, 2 before DOWN), not only where it ended.
 */
import { QueryClient } from '../../core/client/query.ts';
import type { ServerStatus } from '../../core/protocol/messages.ts';
import { sleep } from '../helpers/procs.ts';

export interface Snapshot {
  at: number;
  servers: ServerStatus[];
}

export class StatusWatch {
  readonly snapshots: Snapshot[] = [];
  private q: QueryClient | undefined;

  constructor(private readonly port: number) {}

  /** One STATUS; reconnects when the last session broke. */
  async poll(): Promise<Snapshot> {
    for (let attempt = 0; ; attempt++) {
      try {
        this.q ??= await QueryClient.open({ host: '127.0.0.1', port: this.port, timeoutMs: 5000 });
        const snap = { at: Date.now(), servers: (await this.q.status()).servers };
        this.snapshots.push(snap);
        return snap;
      } catch (e) {
        const q = this.q;
        this.q = undefined;
        await q?.close().catch(() => {});
        if (attempt >= 3) throw e;
      }
    }
  }

  /**
   * Polls until `done(snapshot)` holds; returns the snapshots taken meanwhile (the last one
   * satisfies `done`). Throws after `timeoutMs`.
   */
  async until(done: (s: Snapshot) => boolean, timeoutMs: number, what: string, everyMs = 40): Promise<Snapshot[]> {
    const from = this.snapshots.length;
    const end = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.poll();
      if (done(s)) return this.snapshots.slice(from);
      if (Date.now() > end) {
        const last = s.servers.map((x) => `${x.address} ${x.state} failures=${x.failures} lastError=${x.lastError}`).join('; ');
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last status: ${last}`);
      }
      await sleep(everyMs);
    }
  }

  async close(): Promise<void> {
    await this.q?.close().catch(() => {});
    this.q = undefined;
  }
}

/** The status of `address` in a snapshot (throws when missing: a test bug). */
export function of(s: Snapshot, address: string): ServerStatus {
  const x = s.servers.find((v) => v.address === address);
  if (!x) throw new Error(`${address} not in status`);
  return x;
}
