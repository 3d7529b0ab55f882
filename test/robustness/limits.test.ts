/**
 * Each limit of docs/operations.md ("Limits") is a config value, and each is enforced here on
 * real processes: maximum frame size, HELLO timeout, idle timeout and keep-alive, maximum
 * connections, maximum pending handshakes (QUIC handshakes in progress and connections still
 * without HELLO), streams per connection; plus the rate limit on bad-peer log lines.
 * The check timeout is enforced in faults.test.ts (a server slower than the timeout).
 */
import { expect } from 'chai';
import { encodeFrame } from '../../core/protocol/codec.ts';
import { codeName } from '../../core/protocol/session.ts';
import { CONFIG_SCHEMA } from '../../core/config/config.ts';
import { connect } from '../../core/transport/quic.ts';
import { startServer, startLoadBalancer, waitForState, stopAll, sleep, waitUntil, TempConfigs } from '../helpers/procs.ts';
import { RawPeer, HELLO_CHECKER, rawFrame } from '../helpers/rawpeer.ts';
import { UdpRelay } from '../helpers/udp-relay.ts';
import { HonestChecker } from './honest.ts';

/** A HELLO whose JSON payload is exactly `bytes` long (padding in the token). */
function helloOfSize(bytes: number): Buffer {
  const base = JSON.stringify({ versions: [1], role: 'checker', node: 'raw', token: '' });
  const token = 't'.repeat(bytes - Buffer.byteLength(base));
  const frame = encodeFrame({ type: 'HELLO', body: { versions: [1], role: 'checker', node: 'raw', token } });
  expect(frame.length - 6).to.equal(bytes);
  return frame;
}

const defaultOf = (k: keyof typeof CONFIG_SCHEMA.properties) => (CONFIG_SCHEMA.properties[k] as { default?: unknown }).default;

describe('Robustness: limits', function () {
  this.timeout(60_000);
  const configs = new TempConfigs('qhcp-limits-');
  let honest: HonestChecker | undefined;


  afterEach(async () => {
    await honest?.stop();
    honest = undefined;
    await stopAll();
    configs.cleanup();
  });

  it('every limit has a safe default', () => {
    expect(defaultOf('maxFrameBytes')).to.equal(65536);
    expect(defaultOf('helloTimeout')).to.equal(5);
    expect(defaultOf('idleTimeout')).to.equal(30);
    expect(defaultOf('keepAlive')).to.be.within(1, 29);
    expect(defaultOf('maxConnections')).to.equal(1024);
    expect(defaultOf('maxPendingHandshakes')).to.be.within(8, 1024);
    expect(defaultOf('maxStreams')).to.equal(2);
  });

  it('maxFrameBytes: a payload of exactly the maximum is accepted, one byte more is FRAME_TOO_LARGE', async () => {
    const { proc, port } = await startServer({ args: ['--max-frame-bytes', '2048'] });
    honest = await HonestChecker.start(port);
    const ok = await RawPeer.open({ port });
    await ok.send(helloOfSize(2048));
    await ok.waitFor('ACK');
    await ok.close();
    const big = await RawPeer.open({ port });
    await big.send(helloOfSize(2049));
    const r = await big.closedWith();
    expect(codeName(r.code)).to.equal('FRAME_TOO_LARGE');
    expect(r.reason).to.match(/2049 bytes exceeds the maximum of 2048/);
    // The header alone is enough: a lying length is refused before any payload arrives.
    const header = await RawPeer.open({ port });
    await header.send(rawFrame(1, '', { length: 2049 }));
    expect(codeName((await header.closedWith()).code)).to.equal('FRAME_TOO_LARGE');
    await honest.expectServing();
    expect(proc.running).to.equal(true);
  });

  it('helloTimeout: a connection without HELLO is closed with HELLO_TIMEOUT, not before', async () => {
    const { proc, port } = await startServer({ args: ['--hello-timeout', '0.5'] });
    honest = await HonestChecker.start(port);
    const t0 = Date.now();
    const idle = await RawPeer.open({ port });
    const r = await idle.closedWith(10_000);
    expect(codeName(r.code)).to.equal('HELLO_TIMEOUT');
    expect(Date.now() - t0).to.be.at.least(450);
    // HELLO in time is fine.
    const quick = await RawPeer.open({ port });
    await sleep(200);
    await quick.send(HELLO_CHECKER());
    await quick.waitFor('ACK');
    await sleep(600);
    expect(quick.isClosed, 'a session past HELLO is not timed out').to.equal(false);
    await quick.close();
    await honest.expectServing();
    expect(proc.running).to.equal(true);
  });

  it('idleTimeout: a silent peer is dropped by QUIC; a peer with keep-alive stays', async () => {
    const { port } = await startServer({ args: ['--idle-timeout', '1'] });
    const silent = await RawPeer.open({ port });
    const alive = await RawPeer.open({ port, keepAliveMs: 300 });
    for (const p of [silent, alive]) {
      await p.send(HELLO_CHECKER());
      await p.waitFor('ACK');
    }
    const r = await silent.closedWith(10_000);
    expect(r.close.by).to.equal('idle');
    await sleep(1500);
    expect(alive.isClosed, 'the keep-alive peer outlives the idle timeout').to.equal(false);
    await alive.send(encodeFrame({ type: 'HEALTH_REQUEST', body: { seq: 9 } }));
    await alive.waitFor('HEALTH_RESPONSE');
    await alive.close();
  });

  it('keepAlive: the load balancer keeps one connection across checks spaced wider than the idle timeout', async () => {
    const { proc: server, address } = await startServer({ args: ['--log-level', 'debug'] });
    const kept = configs.file({ idleTimeout: 1, keepAlive: 0.3 });
    const lb = await startLoadBalancer([address], { interval: 1.6, args: ['--config', kept] });
    await waitForState(lb.port, address, 'UP');
    const checks = async () => (await import('../helpers/procs.ts')).queryStatus(lb.port).then((s) => s[0]!.checks);
    const c0 = await checks();
    await waitUntil(async () => (await checks()) >= c0 + 3, 20_000, '3 more checks');
    const connects = (server.output.match(/load balancer connected/g) ?? []).length;
    expect(connects, 'connections the load balancer opened').to.equal(1);
    await lb.proc.stop();

    // Without keep-alive the same spacing costs a reconnect per check: the setting is what holds it.
    const off = configs.file({ idleTimeout: 1, keepAlive: 0 });
    const from = server.output.length;
    const lb2 = await startLoadBalancer([address], { interval: 1.6, args: ['--config', off] });
    await waitForState(lb2.port, address, 'UP');
    await waitUntil(() => (server.output.slice(from).match(/load balancer connected/g) ?? []).length >= 3, 20_000, '3 reconnects without keep-alive');
  });

  it('maxConnections: beyond it a connection is closed with TOO_MANY_CONNECTIONS; the others are served', async () => {
    const { proc, port } = await startServer({ args: ['--max-connections', '3'] });
    honest = await HonestChecker.start(port);
    const peers = [await RawPeer.open({ port }), await RawPeer.open({ port })];
    for (const p of peers) {
      await p.send(HELLO_CHECKER());
      await p.waitFor('ACK');
    }
    const extra = await RawPeer.open({ port });
    const r = await extra.closedWith();
    expect(codeName(r.code)).to.equal('TOO_MANY_CONNECTIONS');
    await honest.expectServing();
    // A freed slot is usable again.
    await peers[0]!.close();
    await waitUntil(async () => {
      const p = await RawPeer.open({ port });
      await sleep(200);
      const open = !p.isClosed;
      await p.close();
      return open;
    }, 10_000, 'a free connection slot');
    expect(proc.running).to.equal(true);
  });

  it('maxPendingHandshakes: idle clients beyond the cap are refused at once, not queued', async () => {
    const { proc, port } = await startServer({ args: ['--max-pending-handshakes', '3', '--hello-timeout', '2'] });
    honest = await HonestChecker.start(port);
    const idle: RawPeer[] = [];
    for (let i = 0; i < 8; i++) idle.push(await RawPeer.open({ port }));
    await sleep(300);
    const refused = idle.filter((p) => p.isClosed);
    expect(refused, 'idle clients refused at once').to.have.length(5);
    for (const p of refused) expect(codeName((await p.closedWith()).code)).to.equal('TOO_MANY_CONNECTIONS');
    await honest.expectServing();
    // The admitted three are closed by the HELLO timeout; then there is room again.
    for (const p of idle.filter((x) => !refused.includes(x))) expect(codeName((await p.closedWith(10_000)).code)).to.equal('HELLO_TIMEOUT');
    const later = await RawPeer.open({ port });
    await later.send(HELLO_CHECKER());
    await later.waitFor('ACK');
    await later.close();
    expect(proc.output).to.match(/connection refused .*too many connections without HELLO/);
    expect(proc.running).to.equal(true);
  });

  it('maxPendingHandshakes: QUIC handshakes beyond the cap are dropped while in progress, and end by the handshake timeout', async () => {
    const { proc, port } = await startServer({ args: ['--max-pending-handshakes', '2', '--hello-timeout', '2'] });
    honest = await HonestChecker.start(port);
    // Stall handshakes: let the server's Retry through, drop everything it sends after it.
    const relay = await UdpRelay.start({ port });
    relay.filter = (dir, _d, flow) => dir === 'up' || flow.index <= 1;
    try {
      const stalled = await Promise.allSettled(Array.from({ length: 6 }, () => connect({ host: '127.0.0.1', port: relay.port, timeoutMs: 1500 })));
      expect(stalled.every((s) => s.status === 'rejected'), 'stalled handshakes never complete').to.equal(true);
      await proc.waitFor(/handshake refused .*too many handshakes in progress/, 10_000);
      await honest.expectServing();
      // In-progress handshakes end by the handshake timeout; new clients get in again.
      await waitUntil(async () => {
        const p = await RawPeer.open({ port, timeoutMs: 1000 }).catch(() => undefined);
        if (!p) return false;
        await p.send(HELLO_CHECKER());
        const ok = await p.waitFor('ACK', 2000).then(() => true, () => false);
        await p.close();
        return ok;
      }, 15_000, 'a handshake after the stalled ones timed out');
    } finally {
      await relay.close();
    }
    expect(proc.running).to.equal(true);
  });

  it('maxStreams: any number of extra streams opened at once gets one EXTRA_STREAM and a close', async () => {
    const { proc, port } = await startServer();
    honest = await HonestChecker.start(port);
    const peer = await RawPeer.open({ port });
    await peer.send(HELLO_CHECKER());
    await peer.waitFor('ACK');
    await Promise.all(Array.from({ length: 5 }, () => peer.openExtraStream()));
    const r = await peer.closedWith();
    expect(codeName(r.code)).to.equal('EXTRA_STREAM');
    expect(peer.received.filter((m) => m.type === 'ERROR')).to.have.length(1);
    await honest.expectServing();
    expect(proc.running).to.equal(true);
  });

  it('bad-peer log lines are rate-limited, and every one is still counted', async () => {
    const { proc, port } = await startServer();
    honest = await HonestChecker.start(port);
    const n = 60;
    const t0 = Date.now();
    for (let i = 0; i < n; i += 10) {
      await Promise.all(
        Array.from({ length: 10 }, async () => {
          const p = await RawPeer.open({ port });
          await p.send(encodeFrame({ type: 'HEALTH_REQUEST', body: { seq: 1 } }));
          await p.closedWith();
        }),
      );
    }
    await honest.expectServing();
    const lines = (proc.output.match(/protocol violation/g) ?? []).length;
    // 20 lines per 10 s window; on a loaded machine the 60 connections may span a second window.
    const windows = Math.ceil((Date.now() - t0) / 10_000);
    expect(lines, `violation log lines in ${windows} window(s)`).to.be.at.most(20 * windows);
    expect(lines, 'violation log lines').to.be.below(n);
    expect(lines).to.be.at.least(1);
    await proc.stop();
    const stopped = proc.output.match(/server stopped .*violations=(\d+).*logLinesSuppressed=(\d+)/);
    expect(stopped, proc.output.slice(-500)).to.not.equal(null);
    expect(Number(stopped![1])).to.equal(n);
    expect(Number(stopped![2])).to.equal(n - lines);
  });
});
