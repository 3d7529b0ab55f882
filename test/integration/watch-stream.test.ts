/**
 * WATCH end to end: real `qhcp loadbalancer` processes checking real `qhcp server` agents and
 * scripted agents (test/helpers/scripted-agent.ts, whose verdicts and weights the test sets),
 * watched through `watch()` from `qhcp/client`, a raw peer (the slow reader) and `qhcp watch`.
 * One set of processes serves the whole file; each case waits for conditions, never fixed sleeps.
 */
import { expect } from 'chai';
import { startLoadBalancer, startServer, runQhcp, stopAll, waitUntil, type QhcpProcess } from '../helpers/procs.ts';
import { ScriptedAgent } from '../helpers/scripted-agent.ts';
import { RawPeer, HELLO_QUERY } from '../helpers/rawpeer.ts';
import { codeName } from '../../core/protocol/session.ts';
import { encodeFrame } from '../../core/protocol/codec.ts';
import { watch, type WatchChange, type WatchView } from '../../core/client/index.ts';
import type { Message } from '../../core/protocol/messages.ts';
import { httpUrl } from '../http/helpers.ts';

type Update = Extract<Message, { type: 'WATCH_UPDATE' }>['body'];

/** Every 'change' of a view, in order. */
function record(view: WatchView): WatchChange[] {
  const out: WatchChange[] = [];
  view.on('change', (c) => out.push(c));
  return out;
}

/** Each delta applies to the version the view held before it (nothing missed). */
function expectChained(changes: WatchChange[], startVersion: number): void {
  let v = startVersion;
  for (const c of changes) {
    if (c.kind === 'delta') expect(c.from, `delta to v${c.version}`).to.equal(v);
    expect(c.version).to.be.greaterThan(c.kind === 'delta' ? v : 0);
    v = c.version;
  }
}

describe('WATCH: streaming the load balancer view to clients', function () {
  this.timeout(120_000);
  const views: WatchView[] = [];
  const scripted: ScriptedAgent[] = [];
  let s1: ScriptedAgent, s2: ScriptedAgent;
  let realA: { proc: QhcpProcess; address: string }, realB: { proc: QhcpProcess; address: string };
  let lb: { proc: QhcpProcess; port: number };
  let servers: string[];

  const open = async (opts: Parameters<typeof watch>[0]) => {
    const v = await watch({ timeoutMs: 5000, readyTimeoutMs: 20_000, backoff: { minMs: 50, maxMs: 300 }, ...opts });
    views.push(v);
    return v;
  };

  before(async () => {
    for (let i = 0; i < 2; i++) {
      const a = await ScriptedAgent.start();
      a.set({ services: { web: { verdict: 'SERVING', since: 1 } } });
      scripted.push(a);
    }
    [s1, s2] = scripted as [ScriptedAgent, ScriptedAgent];
    [realA, realB] = await Promise.all([startServer(), startServer()]);
    servers = [realA.address, realB.address, `${s1.address}/web`, `${s2.address}/web`];
    lb = await startLoadBalancer(servers, { interval: 0.5, fail: 2, reconnect: 0.5, args: ['--watch-queue', '4', '--status-summary', '600', '--http', '127.0.0.1:0'] });
  });

  after(async () => {
    await Promise.all(views.map((v) => v.close()));
    await stopAll();
    await Promise.all(scripted.map((a) => a.stop()));
  });

  it('subscribes: a full view of every backend, then a backend going DOWN as a delta chained to the version before', async () => {
    const v = await open({ addresses: [`127.0.0.1:${lb.port}`] });
    expect(v.run).to.match(/^[0-9a-f]{16}$/);
    expect(v.version).to.be.greaterThan(0);
    expect(v.members.map((m) => m.address)).to.deep.equal(servers);
    await waitUntil(() => v.members.every((m) => m.state === 'UP'), 30_000, 'every backend UP in the watched view', 20);
    const web = v.get(`${s1.address}/web`)!;
    expect(web).to.include({ service: 'web', verdict: 'SERVING', agentAdmin: 'READY', adminState: 'READY' });
    expect(v.get(realA.address)!.metrics).to.have.property('loadScore');
    const start = v.version;
    const changes = record(v);
    realB.proc.signal('SIGKILL');
    await waitUntil(() => v.get(realB.address)?.state === 'DOWN', 20_000, `${realB.address} DOWN in the watched view`, 10);
    const down = changes.find((c) => c.changed.some((m) => m.address === realB.address && m.state === 'DOWN'))!;
    expect(down.kind).to.equal('delta');
    expectChained(changes, start);
    expect(v.stale).to.equal(false);
    expect(v.connected).to.equal(true);
  });

  it('filters by service and by address pattern', async () => {
    const web = await open({ addresses: [`127.0.0.1:${lb.port}`], service: 'web' });
    expect(web.members.map((m) => m.address)).to.deep.equal([`${s1.address}/web`, `${s2.address}/web`]);
    const one = await open({ addresses: [`127.0.0.1:${lb.port}`], match: `*:${s2.port}/*` });
    expect(one.members.map((m) => m.address)).to.deep.equal([`${s2.address}/web`]);
    const changes = record(web);
    const start = web.version;
    s1.set({ services: { web: { verdict: 'NOT_SERVING', reason: 'maintenance script', since: 2 } } });
    await waitUntil(() => web.get(`${s1.address}/web`)?.state === 'DOWN', 10_000, 's1/web DOWN in the filtered view', 10);
    // Only web backends ever reach this view, and its deltas still chain (skipping versions that touch none of them).
    expect(changes.flatMap((c) => c.changed.map((m) => m.service))).to.satisfy((s: unknown[]) => s.every((x) => x === 'web'));
    expectChained(changes, start);
    // The pattern view never heard of s1.
    expect(one.members.map((m) => m.address)).to.deep.equal([`${s2.address}/web`]);
    s1.set({ services: { web: { verdict: 'SERVING', since: 3 } } });
    await waitUntil(() => web.get(`${s1.address}/web`)?.state === 'UP', 10_000, 's1/web UP again', 10);
  });

  it('picks locally with the named balancer: round-robin evenly, weighted-round-robin by weight', async () => {
    const rr = await open({ addresses: [`127.0.0.1:${lb.port}`], service: 'web' });
    await waitUntil(() => rr.members.every((m) => m.state === 'UP'), 10_000, 'web backends UP', 10);
    const count = (view: WatchView, n: number) => {
      const c = new Map<string, number>();
      for (let i = 0; i < n; i++) {
        const hit = view.pick()!;
        c.set(hit.server.address, (c.get(hit.server.address) ?? 0) + 1);
      }
      return Object.fromEntries(c);
    };
    expect(count(rr, 200)).to.deep.equal({ [`${s1.address}/web`]: 100, [`${s2.address}/web`]: 100 });
    s2.set({ weight: 60 });
    s1.set({ weight: 20 });
    const wrr = await open({ addresses: [`127.0.0.1:${lb.port}`], service: 'web', balancer: 'weighted-round-robin' });
    await waitUntil(() => wrr.get(`${s2.address}/web`)?.weight === 0.6 && wrr.get(`${s1.address}/web`)?.weight === 0.2, 10_000, 'weights in the view', 10);
    const got = count(wrr, 400);
    expect(got[`${s1.address}/web`]).to.equal(100);
    expect(got[`${s2.address}/web`]).to.equal(300);
    s1.set({ weight: 100 });
    s2.set({ weight: 100 });
  });

  it('a client that does not read gets the latest view as one full view (resync), not the backlog', async () => {
    const peer = await RawPeer.open({ port: lb.port, receiveWindowBytes: 4096 });
    try {
      await peer.send(HELLO_QUERY());
      await peer.waitFor('ACK');
      await peer.send(encodeFrame({ type: 'WATCH', body: { seq: 7, service: 'web' } }));
      await peer.waitFor('WATCH_UPDATE');
      peer.channel.pauseReading();
      // 60 changes, each in its own event-loop turn of the load balancer (a pushed report each).
      for (let i = 1; i <= 60; i++) {
        s2.set({ weight: 100 + i });
        await new Promise((r) => setTimeout(r, 5));
      }
      await new Promise((r) => setTimeout(r, 300));
      peer.channel.resumeReading();
      const updates = () => peer.received.filter((m): m is Extract<Message, { type: 'WATCH_UPDATE' }> => m.type === 'WATCH_UPDATE').map((m) => m.body);
      const resync = await waitUntil(() => updates().find((u) => u.kind === 'full' && u.resync), 20_000, 'a resync full view', 20);
      // The resync view is the latest: the last weight set.
      await waitUntil(() => {
        const last = [...updates()].reverse().find((u) => u.members.some((m) => m.address === `${s2.address}/web`));
        return last?.members.find((m) => m.address === `${s2.address}/web`)?.weight === 1.6;
      }, 10_000, 'the last weight reaching the slow client', 20);
      const deltas = updates().filter((u) => u.kind === 'delta');
      // Far fewer than the 60 changes: what fitted the 4 KiB window and the 4-delta queue, then the full view.
      expect(deltas.length, 'deltas received').to.be.below(40);
      // Versions never go back, and deltas after the resync chain from its version.
      const after = updates().slice(updates().indexOf(resync as Update));
      let v = resync.version;
      for (const u of after.slice(1)) {
        if (u.kind === 'delta') expect(u.from).to.equal(v);
        v = u.version;
      }
      expect(peer.isClosed).to.equal(false);
      // The load balancer's /metrics counts it, and the watchers open now (this one, and the views of earlier cases).
      const text = await (await fetch(`${await httpUrl(lb.proc)}metrics`, { signal: AbortSignal.timeout(10_000) })).text();
      expect(Number(/^qhcp_watch_resyncs_total (\d+)/m.exec(text)?.[1])).to.be.at.least(1);
      expect(Number(/^qhcp_watchers (\d+)/m.exec(text)?.[1])).to.be.at.least(1);
    } finally {
      await peer.close();
      s2.set({ weight: 100 });
    }
  });

  it('a session in WATCHING asks nothing more: a STATUS on it is 105 UNEXPECTED_MESSAGE, and other sessions go on', async () => {
    const peer = await RawPeer.open({ port: lb.port });
    await peer.send(HELLO_QUERY());
    await peer.waitFor('ACK');
    await peer.send(encodeFrame({ type: 'WATCH', body: { seq: 1 } }));
    await peer.waitFor('WATCH_UPDATE');
    await peer.send(encodeFrame({ type: 'STATUS', body: { seq: 2 } }));
    const r = await peer.closedWith();
    expect(codeName(r.code)).to.equal('UNEXPECTED_MESSAGE');
    expect(r.reason).to.match(/STATUS is not allowed in state WATCHING/);
    expect(views[0]!.connected).to.equal(true);
  });

  it('reconnects to the next load balancer of the list; with none, the view goes stale and keeps serving picks', async () => {
    const lbX = await startLoadBalancer(servers, { interval: 0.5, fail: 2, args: ['--status-summary', '600'] });
    // A killed load balancer sends nothing: the client finds it gone at its idle timeout.
    // Under CPU contention a first handshake can time out and the view moves on to the second
    // address: the case needs it on the first, so it is opened again (bounded) until it is.
    let both: WatchView | undefined;
    for (let i = 0; i < 3 && both?.address !== `127.0.0.1:${lbX.port}`; i++) {
      await both?.close();
      both = await open({ addresses: [`127.0.0.1:${lbX.port}`, `127.0.0.1:${lb.port}`], service: 'web', idleTimeoutMs: 1000 });
    }
    expect(both!.address).to.equal(`127.0.0.1:${lbX.port}`);
    const alone = await open({ addresses: [`127.0.0.1:${lbX.port}`], service: 'web', staleAfterMs: 300, idleTimeoutMs: 1000 });
    expect(alone.address).to.equal(`127.0.0.1:${lbX.port}`);
    await waitUntil(() => [both!, alone].every((v) => v.members.every((m) => m.state === 'UP')), 30_000, 'web backends UP in both views', 10);
    const firstRun = both!.run;
    const bothChanges = record(both!);
    const events: string[] = [];
    alone.on('disconnected', () => events.push('disconnected'));
    alone.on('stale', () => events.push('stale'));
    lbX.proc.signal('SIGKILL');
    await waitUntil(() => both!.address === `127.0.0.1:${lb.port}`, 15_000, 'the view streaming from the second load balancer', 10);
    expect(both!.run).to.not.equal(firstRun);
    expect(bothChanges.some((c) => c.kind === 'full' && c.restarted)).to.equal(true);
    await waitUntil(() => alone.stale, 15_000, 'the lone view marked stale', 10);
    expect(events).to.deep.equal(['disconnected', 'stale']);
    expect(alone.connected).to.equal(false);
    expect(alone.members.length).to.equal(2);
    expect(alone.pick()?.server.address).to.match(/\/web$/);
  });

  it('qhcp watch --json --count: the full view, then changes, one JSON object per line', async () => {
    const r = await runQhcp(['watch', '--address', `127.0.0.1:${lb.port}`, '--json', '--count', '2', '--timeout', '10'], { timeoutMs: 30_000 });
    expect(r.code, r.stderr).to.equal(0);
    const objs = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const changes = objs.filter((o) => o.event === 'change');
    expect(changes).to.have.length(2);
    expect(changes[0]).to.include({ kind: 'full' });
    expect((changes[0]!.members as Array<{ address: string }>).map((m) => m.address)).to.deep.equal(servers);
    expect(changes[1]).to.include({ kind: 'delta', from: changes[0]!.version });
    expect(objs.find((o) => o.event === 'connected')).to.include({ address: `127.0.0.1:${lb.port}` });
    const lines = await runQhcp(['watch', '--address', `127.0.0.1:${lb.port}`, '--service', 'web', '--count', '1'], { timeoutMs: 30_000 });
    expect(lines.code, lines.stderr).to.equal(0);
    expect(lines.stdout.trim().split('\n')).to.have.length(2);
    expect(lines.stdout).to.match(new RegExp(`^v\\d+ full ${s1.address.replace(/\./g, '\\.')}/web UP verdict=SERVING admin=READY weight=1`, 'm'));
  });
});
