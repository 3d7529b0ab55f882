/**
 * tcp-proxy with real TCP backends on loopback: echo servers that greet each connection with
 * their name. The proxy gets its view through the real `sync` hook and its picks from a real
 * balancer plugin (round-robin, least-connections).
 */
import { expect } from 'chai';
import { createConnection, createServer, type Socket, type Server } from 'node:net';
import type { BackendView, SyncUpdate } from '../../core/plugin/hooks.ts';
import TcpProxyPlugin, { type TcpProxy } from '../../plugins/proxy/tcp.ts';
import RoundRobinPlugin from '../../plugins/balancer/round-robin.ts';
import LeastConnectionsPlugin from '../../plugins/balancer/least-connections.ts';
import { build, fakeCore, backend, type FakeCore } from './fake-core.ts';
import { closeEcho, echoBackend, freePort, sleep, waitUntil, type EchoBackend } from '../helpers/proxies.ts';

type Extra = Partial<{ verdict: string; agentAdmin: string; adminState: string }>;
const view = (address: string, over: Parameters<typeof backend>[1] & Extra = {}): BackendView => ({ ...backend(address, over), verdict: 'SERVING', agentAdmin: 'READY', adminState: 'READY', weight: 100, ...over }) as BackendView;
const update = (v: BackendView[]): SyncUpdate => ({ view: v, changed: v, removed: [], initial: false, at: Date.now() });

/** A client of the proxy: what it received so far, and whether it closed. */
class Client {
  data = '';
  closed = false;
  readonly socket: Socket;
  constructor(port: number) {
    this.socket = createConnection(port, '127.0.0.1');
    this.socket.setEncoding('utf8');
    this.socket.on('data', (d: string) => (this.data += d));
    this.socket.on('error', () => {});
    this.socket.on('close', () => (this.closed = true));
  }
  /** The backend's greeting (its name). */
  async greeting(): Promise<string> {
    await waitUntil(() => this.data.includes(';') || this.closed, 5000, 'a greeting');
    return this.data.split(';')[0]!;
  }
  async echo(text: string): Promise<void> {
    const before = this.data.length;
    this.socket.write(text);
    await waitUntil(() => this.data.slice(before).includes(text), 5000, `echo of ${text}`);
  }
  close(): void {
    this.socket.end();
  }
}

describe('proxy plugin tcp-proxy (real TCP backends)', function () {
  this.timeout(60_000);
  let echoes: EchoBackend[];
  const A = ['127.0.0.1:5301', '127.0.0.1:5302', '127.0.0.1:5303'];
  let core: FakeCore;
  let proxy: TcpProxy;
  const clients: Client[] = [];

  const start = async (balancer: 'rr' | 'lc', over: Record<string, unknown> = {}, targets?: Record<string, string>) => {
    core = fakeCore('loadbalancer');
    proxy = build(TcpProxyPlugin, { port: 0, targets: targets ?? Object.fromEntries(A.map((a, i) => [a, `127.0.0.1:${echoes[i]!.port}`])), ...over });
    proxy.apply(core);
    (balancer === 'rr' ? build(RoundRobinPlugin) : build(LeastConnectionsPlugin)).apply(core);
    await core.hooks.start.promise(core);
    core.hooks.sync.call(update(A.map((a) => view(a))));
  };
  const client = () => {
    const c = new Client(proxy.port);
    clients.push(c);
    return c;
  };

  beforeEach(async () => {
    echoes = [await echoBackend('b1;'), await echoBackend('b2;'), await echoBackend('b3;')];
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.socket.destroy();
    await core?.hooks.stop.promise(core);
    for (const e of echoes) await closeEcho(e);
  });

  it('picks a backend per connection with the balancer in use and forwards both ways', async () => {
    await start('rr');
    const names: string[] = [];
    for (let i = 0; i < 6; i++) {
      const c = client();
      names.push(await c.greeting());
      await c.echo(`hello-${i}`);
      c.close();
    }
    expect(names).to.deep.equal(['b1', 'b2', 'b3', 'b1', 'b2', 'b3']);
    await waitUntil(() => proxy.stats.active === 0, 5000, 'all proxied connections closed');
    expect(A.map((a) => proxy.connections(a))).to.deep.equal([0, 0, 0]);
  });

  it('forwards a large stream intact, half-close included', async () => {
    await start('rr');
    const c = client();
    expect(await c.greeting()).to.equal('b1');
    const chunk = 'x'.repeat(64 * 1024);
    for (let i = 0; i < 64; i++) c.socket.write(chunk);
    c.socket.end();
    await waitUntil(() => c.closed, 20_000, 'the echo to end');
    expect(c.data.length).to.equal(3 + 64 * chunk.length);
  });

  it('applies backpressure: a client that does not read holds the backend back', async () => {
    // A backend that writes as fast as the socket lets it (respecting write() === false).
    let written = 0;
    const pusher: Server = createServer((s) => {
      s.on('error', () => {});
      const block = Buffer.alloc(64 * 1024, 1);
      const push = () => {
        while (written < 200 * 1024 * 1024) {
          written += block.length;
          if (!s.write(block)) return void s.once('drain', push);
        }
        s.end();
      };
      push();
    });
    await new Promise<void>((r) => pusher.listen(0, '127.0.0.1', () => r()));
    try {
      await start('rr', {}, Object.fromEntries(A.map((a) => [a, `127.0.0.1:${(pusher.address() as { port: number }).port}`])));
      const s = createConnection({ port: proxy.port, host: '127.0.0.1' });
      s.on('error', () => {});
      s.pause();
      await sleep(1500);
      const held = written;
      await sleep(500);
      // The backend stopped: what it wrote fits the socket buffers and stream high-water marks.
      expect(written).to.equal(held);
      expect(written).to.be.lessThan(32 * 1024 * 1024);
      // Reading again lets it go on.
      let got = 0;
      s.on('data', (d: Buffer) => (got += d.length));
      s.resume();
      await waitUntil(() => got > held + 8 * 1024 * 1024, 10_000, 'more bytes after resume');
      s.destroy();
    } finally {
      pusher.close();
    }
  });

  it('DRAINING, MAINT and DOWN backends get no new connections; open ones finish', async () => {
    await start('rr');
    const old = client();
    expect(await old.greeting()).to.equal('b1');
    core.hooks.sync.call(update([view(A[0]!, { state: 'DRAINING' }), view(A[1]!, { adminState: 'MAINT' }), view(A[2]!)]));
    const names: string[] = [];
    for (let i = 0; i < 4; i++) {
      const c = client();
      names.push(await c.greeting());
      c.close();
    }
    expect(names).to.deep.equal(['b3', 'b3', 'b3', 'b3']);
    await old.echo('still-here');
    core.hooks.sync.call(update([view(A[0]!, { state: 'DOWN' }), view(A[1]!, { agentAdmin: 'DRAIN' }), view(A[2]!, { state: 'UNKNOWN' })]));
    const none = client();
    await waitUntil(() => none.closed, 5000, 'a client with no backend to go to is closed');
    expect(none.data).to.equal('');
    expect(proxy.stats.noBackend).to.be.greaterThanOrEqual(1);
    await old.echo('and-still');
  });

  it('DEGRADED backends take connections only when no UP one can (degraded: fallback)', async () => {
    await start('rr');
    core.hooks.sync.call(update([view(A[0]!, { state: 'DEGRADED' as never }), view(A[1]!, { state: 'DEGRADED' as never }), view(A[2]!)]));
    const names: string[] = [];
    for (let i = 0; i < 3; i++) {
      const c = client();
      names.push(await c.greeting());
      c.close();
    }
    expect(names).to.deep.equal(['b3', 'b3', 'b3']);
    core.hooks.sync.call(update([view(A[0]!, { state: 'DEGRADED' as never }), view(A[1]!, { state: 'DEGRADED' as never }), view(A[2]!, { state: 'DOWN' })]));
    const more: string[] = [];
    for (let i = 0; i < 4; i++) {
      const c = client();
      more.push(await c.greeting());
      c.close();
    }
    expect(new Set(more)).to.deep.equal(new Set(['b1', 'b2']));
  });

  it('closes a connection idle for idleTimeoutMs (a client that sends nothing)', async () => {
    echoes.push(await echoBackend()); // no greeting: nothing flows unless the client sends
    await start('rr', { idleTimeoutMs: 300 }, Object.fromEntries(A.map((a) => [a, `127.0.0.1:${echoes[3]!.port}`])));
    const silent = client();
    const talker = client();
    const t0 = Date.now();
    for (let i = 0; i < 6; i++) {
      await talker.echo(`t${i}`);
      await sleep(100);
    }
    await waitUntil(() => silent.closed, 5000, 'the silent client closed');
    expect(Date.now() - t0).to.be.greaterThanOrEqual(250);
    expect(talker.closed, 'a client that talks stays open').to.equal(false);
    expect(proxy.stats.idleClosed).to.be.greaterThanOrEqual(1);
  });

  it('a backend that resets mid-stream closes only that client', async () => {
    await start('rr');
    const a = client();
    const b = client();
    expect(await a.greeting()).to.equal('b1');
    expect(await b.greeting()).to.equal('b2');
    await a.echo('a1');
    // b1 resets its connection (RST).
    for (const s of echoes[0]!.sockets) s.resetAndDestroy();
    await waitUntil(() => a.closed, 5000, 'the client of the reset backend closed');
    await b.echo('b-still-fine');
    expect(b.closed).to.equal(false);
    // And the proxy still serves new clients.
    const c = client();
    expect(await c.greeting()).to.match(/^b[123]$/);
  });

  it('counts connections per backend and least-connections sends new ones to the emptiest', async () => {
    await start('lc');
    const c1 = client();
    const c2 = client();
    const c3 = client();
    expect([await c1.greeting(), await c2.greeting(), await c3.greeting()]).to.deep.equal(['b1', 'b2', 'b3']);
    const c4 = client();
    expect(await c4.greeting()).to.equal('b1');
    expect(A.map((a) => proxy.connections(a))).to.deep.equal([2, 1, 1]);
    c2.close();
    c3.close();
    await waitUntil(() => proxy.connections(A[1]!) === 0 && proxy.connections(A[2]!) === 0, 5000, 'b2 and b3 counts back to 0');
    const next = [client(), client(), client()];
    const names = [];
    for (const c of next) names.push(await c.greeting());
    // b1 holds 2; b2 and b3 are empty: they take the next connections until they catch up.
    expect(names).to.deep.equal(['b2', 'b3', 'b2']);
    expect(A.map((a) => proxy.connections(a))).to.deep.equal([2, 2, 1]);
  });

  it('ejects a backend whose connects fail (retrying the client elsewhere), never more than maxEjectedPercent', async () => {
    const dead1 = await freePort();
    const dead2 = await freePort();
    await start('rr', { outlier: { consecutiveFailures: 2, baseEjectionMs: 60_000, maxEjectedPercent: 34 } }, { [A[0]!]: `127.0.0.1:${dead1}`, [A[1]!]: `127.0.0.1:${dead2}`, [A[2]!]: `127.0.0.1:${echoes[2]!.port}` });
    const names: string[] = [];
    for (let i = 0; i < 8; i++) {
      const c = client();
      names.push(await c.greeting());
      c.close();
    }
    // Every client reached the live backend (a failed connect is retried on another).
    expect(names).to.deep.equal(Array(8).fill('b3'));
    // 34% of 3 backends: one may be ejected at once, though both dead ones failed enough.
    expect(A.filter((a) => proxy.ejected(a))).to.have.length(1);
    expect(proxy.stats.ejections).to.equal(1);
    expect(proxy.stats.connectFailures).to.be.greaterThanOrEqual(4);
    expect(core.logged(/backend ejected/)).to.have.length(1);
  });

  it('ejection time grows with each ejection and decays while the backend stays in: one step per baseEjectionMs', async () => {
    await start('rr', { outlier: { consecutiveFailures: 1, baseEjectionMs: 1000, maxEjectionMs: 10_000, maxEjectedPercent: 100 } });
    const b = A[0]!;
    const until = (t0: number) => {
      proxy.connectFailed(b, 'test: refused', t0);
      expect(proxy.ejected(b, t0), `ejected at ${t0}`).to.equal(true);
      let t = t0;
      while (proxy.ejected(b, t)) t += 100;
      return t - t0;
    };
    expect(until(0)).to.equal(1000); // first: 1 x base
    expect(until(1000)).to.equal(2000); // again right after: 2 x base
    expect(until(3000)).to.equal(3000); // 3 x base
    // 6000: ejected until then. 2.5 s back in rotation: two steps off (3 -> 1), then this one: 2 x base.
    expect(until(8500)).to.equal(2000);
    // A long healthy spell brings it back to the base time, never below.
    expect(until(60_000)).to.equal(1000);
    // Capped at maxEjectionMs however often it fails in a row.
    let t = 61_000;
    let last = 0;
    for (let i = 0; i < 15; i++) {
      last = until(t);
      t += last;
    }
    expect(last).to.equal(10_000);
  });
});
