/**
 * The WATCH hub on its own (core/roles/watch-hub.ts): versions, filters, paging, and the bounded
 * queue of a subscriber that does not read, against sessions that record what they are sent and
 * say whether their peer reads (QUIC flow control is the integration test's business:
 * test/integration/watch-stream.test.ts).
 */
import { expect } from 'chai';
import { WatchHub, globMatch } from '../core/roles/watch-hub.ts';
import { SyncDispatcher } from '../core/plugin/sync.ts';
import { createHooks, type BackendView } from '../core/plugin/hooks.ts';
import { validateBody, type Bodies } from '../core/protocol/messages.ts';
import type { Session } from '../core/protocol/session.ts';

type Update = Bodies['WATCH_UPDATE'];

/** A session whose peer reads (or not): `pendingBytes` > 0 until `drain()`. */
class FakeSession {
  sent: Update[] = [];
  isClosed = false;
  reading = true;
  peerMaxFrameBytes: number | undefined;
  private release: (() => void) | undefined;
  readonly channel = { pendingBytes: 0 };
  trySend(type: string, body: Update): boolean {
    expect(type).to.equal('WATCH_UPDATE');
    validateBody('WATCH_UPDATE', body);
    this.sent.push(body);
    if (!this.reading) this.channel.pendingBytes += 100;
    return true;
  }
  written(): Promise<void> {
    if (this.channel.pendingBytes === 0) return Promise.resolve();
    return new Promise((r) => (this.release = r));
  }
  /** The peer reads everything it was sent. */
  async drain(): Promise<void> {
    this.reading = true;
    this.channel.pendingBytes = 0;
    this.release?.();
    for (let i = 0; i < 5; i++) await Promise.resolve();
  }
}

function backend(address: string, extra: Partial<BackendView> = {}): BackendView {
  return { address, state: 'UP', since: 1, metrics: {}, reportedAt: null, weight: 1, latencyMs: null, verdict: 'SERVING', agentAdmin: 'READY', adminState: 'READY', reason: null, ...extra };
}

describe(WatchHub.name, () => {
  let pool: BackendView[];
  let feed: SyncDispatcher;
  let hub: WatchHub;
  const flush = () => feed.flush();

  beforeEach(() => {
    pool = [backend('a:1/web', { service: 'web' }), backend('b:1/web', { service: 'web' }), backend('c:1')];
    feed = new SyncDispatcher(createHooks(), () => pool, 60_000);
    hub = new WatchHub(() => feed, (s) => s.peerMaxFrameBytes ?? 65536, { maxQueue: 3, maxQueueBytes: 1 << 20 });
  });
  afterEach(() => {
    hub.stop();
    feed.stop();
  });

  it('sends a full view, then deltas chained by version; a filter skips what it does not watch', () => {
    const all = new FakeSession();
    const web = new FakeSession();
    hub.subscribe(all as unknown as Session, { seq: 1 });
    hub.subscribe(web as unknown as Session, { seq: 2, service: 'web' });
    expect(all.sent[0]).to.include({ kind: 'full', version: 1, seq: 1 });
    expect(all.sent[0]!.members.map((m) => m.address)).to.deep.equal(['a:1/web', 'b:1/web', 'c:1']);
    expect(web.sent[0]!.members.map((m) => m.address)).to.deep.equal(['a:1/web', 'b:1/web']);
    pool = [pool[0]!, pool[1]!, backend('c:1', { state: 'DOWN', reason: 'gone' })];
    flush();
    pool = [backend('a:1/web', { service: 'web', weight: 0.5 }), pool[1]!];
    flush();
    expect(all.sent.slice(1)).to.deep.equal([
      { seq: 1, run: hub.run, version: 2, kind: 'delta', from: 1, members: [{ address: 'c:1', state: 'DOWN', since: 1, verdict: 'SERVING', agentAdmin: 'READY', adminState: 'READY', weight: 1, metrics: {}, reason: 'gone', reportAgeMs: null }] },
      { seq: 1, run: hub.run, version: 3, kind: 'delta', from: 2, members: [{ address: 'a:1/web', service: 'web', state: 'UP', since: 1, verdict: 'SERVING', agentAdmin: 'READY', adminState: 'READY', weight: 0.5, metrics: {}, reason: null, reportAgeMs: null }], removed: ['c:1'] },
    ]);
    // The web view never heard of version 2 (c:1 only): its delta goes from 1 to 3.
    expect(web.sent.slice(1).map((u) => [u.from, u.version, u.removed])).to.deep.equal([[1, 3, undefined]]);
  });

  it('a subscriber that does not read: at most its queue, then one full view of the latest (resync)', async () => {
    const slow = new FakeSession();
    hub.subscribe(slow as unknown as Session, { seq: 1 });
    slow.reading = false;
    for (let i = 1; i <= 20; i++) {
      pool = [backend('a:1/web', { service: 'web', weight: i }), pool[1]!, pool[2]!];
      flush();
    }
    // One delta went out before the peer stopped reading was noticed; the rest waited, overflowed, were dropped.
    expect(slow.sent).to.have.length(2);
    expect(hub.stats.resyncs).to.be.greaterThan(0);
    await slow.drain();
    const last = slow.sent[slow.sent.length - 1]!;
    // Weight 1 was no change: 19 versions after the first.
    expect(last).to.include({ kind: 'full', resync: true, version: 20 });
    expect(last.members.find((m) => m.address === 'a:1/web')!.weight).to.equal(20);
    expect(slow.sent.length).to.be.below(8);
    // And on from there.
    pool = [backend('a:1/web', { service: 'web', weight: 99 }), pool[1]!, pool[2]!];
    flush();
    expect(slow.sent[slow.sent.length - 1]).to.include({ kind: 'delta', from: 20, version: 21 });
  });

  it('pages a full view to the client frame size', () => {
    pool = Array.from({ length: 300 }, (_, i) => backend(`10.0.${Math.floor(i / 250)}.${i % 250}:4243`, { metrics: { loadScore: 0.5, cpu: 12.5 } }));
    const s = new FakeSession();
    s.peerMaxFrameBytes = 4096;
    hub.subscribe(s as unknown as Session, { seq: 1 });
    expect(s.sent.length).to.be.greaterThan(5);
    for (const u of s.sent) expect(Buffer.byteLength(JSON.stringify(u))).to.be.at.most(4096);
    expect(s.sent.slice(0, -1).every((u) => u.more === true && u.version === 1)).to.equal(true);
    expect(s.sent[s.sent.length - 1]!.more).to.equal(undefined);
    expect(s.sent.flatMap((u) => u.members).length).to.equal(300);
  });

  it('globMatch: * is any run of characters, everything else itself', () => {
    expect(globMatch('10.0.*:4243/*', '10.0.1.7:4243/web')).to.equal(true);
    expect(globMatch('10.0.*:4243/*', '10.1.1.7:4243/web')).to.equal(false);
    expect(globMatch('*', '')).to.equal(true);
    expect(globMatch('a.b', 'axb')).to.equal(false);
    expect(globMatch('*a*a*a*a*a*a*b', 'a'.repeat(300))).to.equal(false);
  });
});
