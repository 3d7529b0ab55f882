/**
 * The QUIC driver (core/transport/driver.ts, retry.ts; its deadlines in core/util/deadlines.ts) on real sockets on loopback:
 * ordering under bursts, closes, connection ids issued/routed/retired, stateless retry with
 * tokens that expire and are spent once, version negotiation, stateless reset, idle timeout,
 * migration refused, backpressure, IPv6, and ICMP port unreachable failing a connect at once.
 */
import { expect } from 'chai';
import { createSocket, type Socket } from 'node:dgram';
import { Listener, ClientSocket, connect, wholeMs, ACK_DELAY_MS, MAX_ACK_DELAY_MS, type Channel, type ChannelClose } from '../core/transport/quic.ts';
import { selfSigned } from '../core/transport/tls.ts';
import { RetryTokens, TokenLedger } from '../core/transport/retry.ts';
import { DeadlineHeap } from '../core/util/deadlines.ts';
import { isLoopback } from '../core/transport/driver.ts';
import { UdpRelay } from './helpers/udp-relay.ts';
import { connectRaw, type RawChannel } from './helpers/raw-channel.ts';
import { ACK_EVERY, ECHO_GAP_MS, MAX_SEND_QUEUE, MAX_CLOSE_DATAGRAMS, HOLD_MIN_CONNS, MAX_HOLD_MS, MAX_LOCAL_LAG_MS, RECV_BATCH, holdFor, Endpoint, quiche } from '../core/transport/driver.ts';
import type { Message } from '../core/protocol/messages.ts';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}
const recorder = (ch: Channel) => {
  const got: Message[] = [];
  const closed = new Promise<ChannelClose>((resolve) => ch.setHandler({ message: (m) => got.push(m), protocolError: () => {}, ended: () => {}, closed: resolve }));
  return { got, closed };
};

describe('Transport driver (quiche, our own)', function () {
  this.timeout(60_000);
  let tls: { cert: string; key: string };
  const listeners: Listener[] = [];
  const clients: Channel[] = [];
  const relays: UdpRelay[] = [];
  const sockets: Socket[] = [];
  const serverSide: Channel[] = [];

  before(async () => {
    tls = await selfSigned();
  });

  /** A listener that answers each HEALTH_REQUEST with a HEALTH_RESPONSE of the same seq. */
  async function echo(opts: { host?: string; idleTimeoutMs?: number; loopbackWithoutRetry?: boolean; maxAckDelayMs?: number; onChannel?: (ch: Channel) => void } = {}): Promise<Listener> {
    const l = await Listener.listen({
      host: opts.host ?? '127.0.0.1',
      port: 0,
      cert: tls.cert,
      key: tls.key,
      ...(opts.idleTimeoutMs ? { idleTimeoutMs: opts.idleTimeoutMs } : {}),
      ...(opts.loopbackWithoutRetry ? { loopbackWithoutRetry: true } : {}),
      ...(opts.maxAckDelayMs !== undefined ? { maxAckDelayMs: opts.maxAckDelayMs } : {}),
      onChannel: (ch) => {
        serverSide.push(ch);
        if (opts.onChannel) return opts.onChannel(ch);
        ch.setHandler({
          message: (m) => {
            if (m.type === 'HEALTH_REQUEST') void ch.send({ type: 'HEALTH_RESPONSE', body: { seq: m.body.seq, metrics: { n: m.body.seq }, ageMs: 0, verdict: 'SERVING', admin: 'READY', weight: 100 } });
          },
          protocolError: () => {},
          ended: () => {},
          closed: () => {},
        });
      },
    });
    listeners.push(l);
    return l;
  }

  async function dial(port: number, extra: Partial<Parameters<typeof connect>[0]> = {}): Promise<RawChannel> {
    const ch = await connectRaw({ host: '127.0.0.1', port, timeoutMs: 10_000, ...extra });
    clients.push(ch);
    return ch;
  }

  async function udp(type: 'udp4' | 'udp6' = 'udp4'): Promise<Socket> {
    const s = createSocket(type);
    await new Promise<void>((r) => s.bind(0, type === 'udp4' ? '127.0.0.1' : '::1', () => r()));
    sockets.push(s);
    return s;
  }

  afterEach(async () => {
    for (const c of clients.splice(0)) await c.close(0, 'test done');
    for (const r of relays.splice(0)) await r.close();
    for (const s of sockets.splice(0)) s.close();
    serverSide.length = 0;
    for (const l of listeners.splice(0)) await l.stop();
  });

  it('a burst of 3000 requests on one connection: every answer arrives, in order, intact', async () => {
    const l = await echo();
    const ch = await dial(l.port);
    const seqs: number[] = [];
    let bad = 0;
    ch.setHandler({
      message: (m) => {
        if (m.type !== 'HEALTH_RESPONSE' || m.body.metrics.n !== m.body.seq) bad++;
        else seqs.push(m.body.seq);
      },
      protocolError: () => bad++,
      ended: () => {},
      closed: () => {},
    });
    const N = 3000;
    await Promise.all(Array.from({ length: N }, (_, i) => ch.send({ type: 'HEALTH_REQUEST', body: { seq: i } })));
    await until(() => seqs.length >= N || bad > 0, 20_000, `${N} answers`);
    expect(bad).to.equal(0);
    expect(seqs.every((s, i) => s === i), 'answers in request order').to.equal(true);
  });

  it('a close with an application code and reason reaches the peer; the ERROR written before it arrives first', async () => {
    const l = await echo();
    const ch = await dial(l.port);
    const { got, closed } = recorder(ch);
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
    await until(() => serverSide.length > 0 && got.length > 0, 10_000, 'the server side');
    void serverSide[0]!.send({ type: 'ERROR', body: { code: 301, reason: 'going away' } });
    await serverSide[0]!.close(301, 'shutting down');
    const info = await closed;
    expect(info).to.deep.equal({ by: 'peer', code: 301, reason: 'shutting down' });
    expect(got.map((m) => m.type)).to.deep.equal(['HEALTH_RESPONSE', 'ERROR']);
  });

  it('connection ids: spare ids are issued and routed; a retired id is forgotten and traffic goes on', async () => {
    const l = await echo();
    const ch = await dial(l.port);
    const { got } = recorder(ch);
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
    await until(() => got.length === 1, 10_000, 'first answer');
    const server = serverSide[0]!.connection;
    const idsBefore = [...server.cids];
    expect(idsBefore.length, 'the first id and the spare ones').to.equal(3);
    expect(idsBefore.every((k) => l.endpoint.conns.get(k) === server)).to.equal(true);
    // The client moves to a spare id by retiring the one it used (sequence 0).
    const q = ch.connection.q;
    await until(() => q.availableDcids() > 0, 5_000, 'spare ids at the client');
    q.retireDestinationCid(0);
    ch.connection.ep.touch(ch.connection);
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 2 } });
    await until(() => got.length === 2, 10_000, 'answer over the new id');
    await until(() => server.cids.length === 2, 5_000, 'the retired id forgotten');
    expect(server.cids).to.not.include(idsBefore[0]);
    expect(l.endpoint.conns.has(idsBefore[0]!)).to.equal(false);
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 3 } });
    await until(() => got.length === 3, 10_000, 'third answer');
  });

  it('loopbackWithoutRetry: loopback clients (IPv4 and IPv6) connect without a Retry round trip and are served', async () => {
    const l = await echo({ host: '::', loopbackWithoutRetry: true });
    for (const host of ['127.0.0.1', '::1']) {
      const ch = await dial(l.port, { host });
      const { got } = recorder(ch);
      await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
      await until(() => got.length === 1, 10_000, `an answer over ${host}`);
    }
    expect(l.stats.retries).to.equal(0);
    expect(l.stats.tokensRefused).to.equal(0);
    // The control case: the same listener without the option retries every new connection.
    const plain = await echo();
    await dial(plain.port);
    expect(plain.stats.retries).to.equal(1);
    expect(['127.0.0.1', '127.9.9.9', '::1', '::ffff:127.0.0.1'].every(isLoopback)).to.equal(true);
    expect(['10.0.0.1', '::ffff:10.0.0.1', '::', '0.0.0.0', 'fe80::1', '128.0.0.1'].some(isLoopback)).to.equal(false);
  });

  it('stateless retry: every new connection is retried; a replayed token-bearing Initial starts nothing, from its own address or another', async () => {
    const l = await echo();
    const relay = await UdpRelay.start({ port: l.port });
    relays.push(relay);
    const captured = new Map<string, Buffer>();
    // Up datagram 2 of a flow is the client's Initial repeated with the Retry token.
    relay.filter = (dir, data, flow) => {
      if (dir === 'up' && flow.index === 2) captured.set(flow.client, Buffer.from(data));
      return true;
    };
    const ch = await dial(relay.port);
    const { got } = recorder(ch);
    expect(l.stats.retries).to.equal(1);
    expect(captured.size).to.equal(1);
    const [client, initial] = [...captured][0]!;
    expect(initial.length).to.be.at.least(1200);
    const conns = l.endpoint.count;
    const migrations = l.stats.migrationsRefused;
    // Replayed on the path (same address and port): routed to the live connection, no new one.
    for (let i = 0; i < 20; i++) relay.inject(client, initial);
    // Replayed from elsewhere while it lives: its id routes it to the connection, which takes
    // packets from its own address only.
    const other = await udp();
    for (let i = 0; i < 20; i++) other.send(initial, l.port, '127.0.0.1');
    await until(() => l.stats.migrationsRefused >= migrations + 20, 5_000, 'replays from another port dropped');
    expect(l.endpoint.count).to.equal(conns);
    // The connection is unharmed.
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 5 } });
    await until(() => got.length === 1, 10_000, 'answer after the replays');
    // Once it is gone, the same Initial is refused from its own address (tokens are spent once)
    // and from another (tokens are bound to address and port).
    await ch.close(0, 'bye');
    await until(() => l.endpoint.count === conns - 1, 10_000, 'the connection forgotten (draining over)');
    const before = l.stats.tokensRefused;
    for (let i = 0; i < 5; i++) relay.inject(client, initial);
    await until(() => l.stats.tokensRefused >= before + 5, 5_000, 'spent token refused');
    for (let i = 0; i < 5; i++) other.send(initial, l.port, '127.0.0.1');
    await until(() => l.stats.tokensRefused >= before + 10, 5_000, 'token from another port refused');
    expect(l.endpoint.count).to.equal(conns - 1);
  });

  it('retry tokens: bound to address, port and connection id, expire, and a ledger spends each once (bounded)', () => {
    const t = new RetryTokens(10_000);
    const odcid = Buffer.alloc(20, 1);
    const scid = Buffer.alloc(20, 2);
    const now = 1_700_000_000_000;
    const tok = t.mint(odcid, scid, '127.0.0.1', 4000, now);
    expect(t.check(tok, scid, '127.0.0.1', 4000, now + 1000)).to.deep.equal({ odcid });
    expect(t.check(tok, scid, '127.0.0.1', 4001, now)).to.have.property('refused');
    expect(t.check(tok, scid, '127.0.0.2', 4000, now)).to.have.property('refused');
    expect(t.check(tok, Buffer.alloc(20, 3), '127.0.0.1', 4000, now)).to.have.property('refused');
    expect(t.check(tok, scid, '127.0.0.1', 4000, now + 10_000)).to.deep.equal({ refused: 'token expired' });
    const forged = Buffer.from(tok);
    forged.writeUIntBE(now + 60_000, 1, 6);
    expect(t.check(forged, scid, '127.0.0.1', 4000, now)).to.have.property('refused');
    expect(new RetryTokens(10_000).check(tok, scid, '127.0.0.1', 4000, now), 'another process key').to.have.property('refused');
    expect(t.check(Buffer.from('short'), scid, '127.0.0.1', 4000, now)).to.have.property('refused');
    const ledger = new TokenLedger(3);
    expect(ledger.spend('a', now + 10, now)).to.equal(true);
    expect(ledger.spend('a', now + 10, now)).to.equal(false);
    expect(ledger.spend('b', now + 10, now)).to.equal(true);
    expect(ledger.spend('c', now + 10, now)).to.equal(true);
    expect(ledger.spend('d', now + 10, now), 'full').to.equal(false);
    expect(ledger.spend('d', now + 20, now + 11), 'expired entries leave').to.equal(true);
    expect(ledger.size).to.equal(1);
  });

  it('version negotiation: an Initial of an unknown version gets a Version Negotiation listing version 1; short ones get nothing', async () => {
    const l = await echo();
    const s = await udp();
    const replies: Buffer[] = [];
    s.on('message', (m) => replies.push(m));
    const pkt = Buffer.alloc(1200);
    pkt[0] = 0xc0;
    pkt.writeUInt32BE(0x1a2a3a4a, 1);
    pkt[5] = 8;
    Buffer.alloc(8, 0xaa).copy(pkt, 6);
    pkt[14] = 8;
    Buffer.alloc(8, 0xbb).copy(pkt, 15);
    s.send(pkt.subarray(0, 600), l.port, '127.0.0.1');
    s.send(pkt, l.port, '127.0.0.1');
    await until(() => replies.length > 0, 5_000, 'a Version Negotiation packet');
    await sleep(100);
    expect(replies).to.have.length(1);
    const vn = replies[0]!;
    expect(vn[0]! & 0x80).to.equal(0x80);
    expect(vn.readUInt32BE(1), 'version 0 = Version Negotiation').to.equal(0);
    // Its ids are ours swapped: destination = the client's source id.
    expect(vn[5]).to.equal(8);
    expect(vn.subarray(6, 14).equals(Buffer.alloc(8, 0xbb))).to.equal(true);
    const versions: number[] = [];
    for (let o = 6 + 8 + 1 + vn[14]!; o + 4 <= vn.length; o += 4) versions.push(vn.readUInt32BE(o));
    expect(versions).to.include(1);
    expect(l.stats.versionNegotiations).to.equal(1);
  });

  it('stateless reset: a short-header packet for an id nobody holds gets a reset, shorter than it, at a bounded rate', async () => {
    const l = await echo();
    const s = await udp();
    const replies: Buffer[] = [];
    s.on('message', (m) => replies.push(m));
    const pkt = Buffer.alloc(100, 0x5a);
    pkt[0] = 0x41;
    for (let i = 0; i < 300; i++) s.send(pkt, l.port, '127.0.0.1');
    await until(() => replies.length >= 1, 5_000, 'a stateless reset');
    await sleep(300);
    // 100 per second: a burst that straddles a second boundary gets at most two windows' worth.
    expect(replies.length, 'rate-limited').to.be.within(1, 200);
    for (const r of replies) {
      expect(r.length).to.be.lessThan(pkt.length);
      expect(r[0]! & 0xc0, 'short header form').to.equal(0x40);
    }
    // Tiny packets are not answered (no amplification, no reset loops).
    const before = replies.length;
    s.send(pkt.subarray(0, 30), l.port, '127.0.0.1');
    await sleep(200);
    expect(replies.length).to.equal(before);
  });

  it('idle timeout is reported as a failure on both ends when the path goes silent', async () => {
    const l = await echo({ idleTimeoutMs: 800 });
    const relay = await UdpRelay.start({ port: l.port });
    relays.push(relay);
    const ch = await dial(relay.port, { idleTimeoutMs: 800 });
    const { closed } = recorder(ch);
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
    await until(() => serverSide.length === 1, 10_000, 'server side');
    const serverClosed = new Promise<ChannelClose>((resolve) => serverSide[0]!.setHandler({ message: () => {}, protocolError: () => {}, ended: () => {}, closed: resolve }));
    relay.set({ cut: true });
    const [c, s] = await Promise.all([closed, serverClosed]);
    expect(c.by).to.equal('idle');
    expect(s.by).to.equal('idle');
    await until(() => l.endpoint.count === 0, 5_000, 'the server forgets it');
  });

  it('nudge: a lost request is resent once a PING is acknowledged, without waiting for the probe timeout; nothing on a closed connection', async () => {
    // The server announces a max_ack_delay of 16 s, so the client's probe timeout is longer than
    // this test: whatever repairs the lost request here is the nudge.
    const l = await echo({ maxAckDelayMs: 16_000 });
    const relay = await UdpRelay.start({ port: l.port });
    relays.push(relay);
    const ch = await dial(relay.port);
    const { got } = recorder(ch);
    const stats = ch.connection.ep.stats;
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
    await until(() => got.length === 1, 10_000, 'first answer');
    await sleep(100); // the handshake's last packets and acknowledgements settle
    // The next datagram up (the request) is dropped.
    let dropped = 0;
    relay.filter = (dir) => (dir === 'up' && dropped === 0 ? (dropped++, false) : true);
    const nudges0 = stats.nudges;
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 2 } });
    await until(() => dropped === 1, 5_000, 'the request dropped');
    await sleep(500);
    expect(got, 'no answer: the probe timeout is far off').to.have.length(1);
    const up0 = relay.counters.up.forwarded;
    ch.nudge();
    await until(() => got.length === 2, 5_000, 'the answer after a nudge');
    expect((got[1] as Extract<Message, { type: 'HEALTH_RESPONSE' }>).body.seq).to.equal(2);
    expect(stats.nudges - nudges0).to.equal(1);
    // The PING, then the request again.
    expect(relay.counters.up.forwarded - up0).to.be.at.least(2);
    await ch.close(0, 'done');
    const up1 = relay.counters.up.forwarded;
    ch.nudge();
    await sleep(50);
    expect(stats.nudges - nudges0, 'a closed connection is not nudged').to.equal(1);
    expect(relay.counters.up.forwarded).to.be.at.most(up1 + 1);
  });

  const pushed = (seq: number): Message => ({ type: 'HEALTH_RESPONSE', body: { seq, metrics: {}, ageMs: 0, verdict: 'SERVING', admin: 'READY', weight: 100 } });

  it('acknowledgement deferral: in-order data is acknowledged every ACK_EVERY-th packet, announced in max_ack_delay; a packet after a gap at once, so the lost one is resent long before the probe timeout', async () => {
    const l = await echo();
    const relay = await UdpRelay.start({ port: l.port });
    relays.push(relay);
    const deferred = await dial(relay.port, { ackDeferMs: 10_000 });
    const { got } = recorder(deferred);
    await deferred.send({ type: 'HEALTH_REQUEST', body: { seq: 0 } });
    await until(() => got.length === 1 && serverSide.length === 1, 10_000, 'the first answer');
    const srv = serverSide[0]!;
    // The server's probe timeout now waits for our acknowledgements: 10 s and more.
    expect(srv.connection.q.stats().peerMaxAckDelay).to.equal(ACK_DELAY_MS + 10_000);
    await sleep(200); // the handshake's last packets settle
    const stats = deferred.connection.ep.stats;
    const up0 = relay.counters.up.forwarded;
    const deferred0 = stats.acksDeferred;
    // Ten frames pushed 50 ms apart, each in a packet of its own.
    for (let i = 1; i <= 10; i++) {
      await srv.send(pushed(i));
      await sleep(50);
    }
    await until(() => got.length === 11, 5_000, 'ten pushed frames');
    await sleep(100);
    const acks = Math.round(10 / ACK_EVERY);
    expect(relay.counters.up.forwarded - up0, `one acknowledgement per ${ACK_EVERY} packets`).to.be.within(acks - 1, acks + 1);
    expect(stats.acksDeferred - deferred0).to.be.within(10 - acks - 1, 10 - acks + 1);

    // The next packet down is lost; the one after it arrives first, with no data that can be
    // read: acknowledged at once, which lets the server declare the lost one lost and resend it.
    let dropped = 0;
    relay.filter = (dir) => (dir === 'down' && dropped === 0 ? (dropped++, false) : true);
    await srv.send(pushed(11));
    await until(() => dropped === 1, 5_000, 'the packet dropped');
    await sleep(100);
    await srv.send(pushed(12));
    await until(() => got.length === 13, 3_000, 'the lost frame resent (the probe timeout is over 10 s off)');
    expect(got.slice(11).map((m) => (m as Extract<Message, { type: 'HEALTH_RESPONSE' }>).body.seq)).to.deep.equal([11, 12]);

    // Without deferral: every packet is acknowledged on its own.
    const relay2 = await UdpRelay.start({ port: l.port });
    relays.push(relay2);
    const plain = await dial(relay2.port);
    const r2 = recorder(plain);
    await plain.send({ type: 'HEALTH_REQUEST', body: { seq: 0 } });
    await until(() => r2.got.length === 1 && serverSide.length === 2, 10_000, 'the first answer');
    await sleep(200);
    const srv2 = serverSide[1]!;
    const up1 = relay2.counters.up.forwarded;
    for (let i = 1; i <= 10; i++) {
      await srv2.send(pushed(i));
      await sleep(50);
    }
    await until(() => r2.got.length === 11, 5_000, 'ten pushed frames');
    await sleep(100);
    expect(relay2.counters.up.forwarded - up1).to.be.at.least(9);
  });

  it('a deferred acknowledgement leaves at its deadline when no second packet comes, or with the next request', async () => {
    // The server announces 16 s of acknowledgement delay, so our probe timeout is far off and
    // every datagram counted below is a request or an acknowledgement (a loaded CI run once
    // counted a probe); the deferral (1 s) is longer than any pause a loaded runner makes here.
    const l = await echo({ maxAckDelayMs: 16_000 });
    const relay = await UdpRelay.start({ port: l.port });
    relays.push(relay);
    const ch = await dial(relay.port, { ackDeferMs: 1_000 });
    const { got } = recorder(ch);
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
    await until(() => got.length === 1, 10_000, 'the first answer');
    await sleep(1_500); // any deferred acknowledgement of the handshake's packets is out
    const up0 = relay.counters.up.forwarded;
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 2 } });
    await until(() => got.length === 2, 5_000, 'the second answer');
    await sleep(100);
    expect(relay.counters.up.forwarded - up0, 'the request only: the answer is not acknowledged yet').to.equal(1);
    await until(() => relay.counters.up.forwarded - up0 === 2, 5_000, 'the acknowledgement at its deadline');
    // An answer acknowledged in the next request's packet: one datagram up per exchange.
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 3 } });
    await until(() => got.length === 3, 5_000, 'the third answer');
    await sleep(50);
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 4 } });
    await until(() => got.length === 4, 5_000, 'the fourth answer');
    await sleep(50);
    expect(relay.counters.up.forwarded - up0).to.equal(4);
  });

  it('echo: a server answers a PING with a PING; its acknowledgement lets the server resend a lost answer at once (not at its probe timeout); ACK-only packets are not echoed', async () => {
    // Both probe timeouts far off (the server announces 16 s, the client defers 15 s): only the
    // nudge and its echo can repair the lost answer here.
    const l = await echo({ maxAckDelayMs: 16_000 });
    const relay = await UdpRelay.start({ port: l.port });
    relays.push(relay);
    const ch = await dial(relay.port, { ackDeferMs: 15_000 });
    const { got } = recorder(ch);
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
    await until(() => got.length === 1, 10_000, 'first answer');
    await sleep(200);
    // The next datagram down (the answer) is lost.
    let dropped = 0;
    relay.filter = (dir) => (dir === 'down' && dropped === 0 ? (dropped++, false) : true);
    const echoes0 = l.stats.echoes;
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 2 } });
    await until(() => dropped === 1, 5_000, 'the answer dropped');
    await sleep(500);
    expect(got, 'no answer: the probe timeout is far off').to.have.length(1);
    ch.nudge();
    await until(() => got.length === 2, 3_000, 'the answer after a nudge and its echo');
    expect((got[1] as Extract<Message, { type: 'HEALTH_RESPONSE' }>).body.seq).to.equal(2);
    // The PING's echo; and possibly one more after the resend (quiche sent a packet for the
    // acknowledgement it got: the driver cannot tell a resend from an acknowledgement there).
    const echoes = l.stats.echoes - echoes0;
    expect(echoes).to.be.within(1, 2);
    // Quiet afterwards: acknowledgements are not echoed, so nothing ping-pongs.
    await sleep(300);
    const up = relay.counters.up.forwarded;
    const down = relay.counters.down.forwarded;
    await sleep(500);
    expect(relay.counters.up.forwarded).to.equal(up);
    expect(relay.counters.down.forwarded).to.equal(down);
    expect(l.stats.echoes - echoes0).to.equal(echoes);
  });

  it('echo cap: a client flooding PINGs gets its acknowledgements, and at most one echo per ECHO_GAP_MS', async () => {
    const l = await echo();
    const relay = await UdpRelay.start({ port: l.port });
    relays.push(relay);
    const ch = await dial(relay.port);
    const { got } = recorder(ch);
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
    await until(() => got.length === 1, 10_000, 'first answer');
    await sleep(200);
    const echoes0 = l.stats.echoes;
    const capped0 = l.stats.echoesCapped;
    const down0 = relay.counters.down.forwarded;
    // 200 PINGs, one per event-loop turn (each its own packet), as fast as the loop turns.
    const t0 = performance.now();
    for (let i = 0; i < 200; i++) {
      ch.nudge();
      await new Promise((r) => setImmediate(r));
    }
    const ms = performance.now() - t0;
    await sleep(300);
    const echoes = l.stats.echoes - echoes0;
    expect(echoes, `${echoes} echoes in ${Math.round(ms)} ms`).to.be.at.most(Math.ceil((ms + 300) / ECHO_GAP_MS) + 1);
    expect(l.stats.echoesCapped - capped0, 'PINGs left without an echo').to.be.greaterThan(0);
    // Every PING was acknowledged all the same (an ACK may cover several): the connection lives on.
    expect(relay.counters.down.forwarded - down0).to.be.at.least(echoes);
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 2 } });
    await until(() => got.length === 2, 5_000, 'an answer after the flood');
  });

  it('migration is refused: after the client moves to another port its packets are dropped and the connection dies', async () => {
    const l = await echo({ idleTimeoutMs: 1500 });
    const relay = await UdpRelay.start({ port: l.port });
    relays.push(relay);
    const ch = await dial(relay.port, { idleTimeoutMs: 1500 });
    const { got, closed } = recorder(ch);
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
    await until(() => got.length === 1, 10_000, 'first answer');
    // The relay forgets its flows: the next datagrams reach the server from a new port.
    relay.resetFlows();
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 2 } });
    const end = await closed;
    expect(l.stats.migrationsRefused).to.be.greaterThan(0);
    expect(got).to.have.length(1);
    expect(end.by).to.equal('idle');
  });

  it('backpressure: a large message is written in parts as the peer reads; a peer that stops reading holds the writer, bounded', async () => {
    const l = await echo({ onChannel: () => {} });
    const ch = await dial(l.port, { maxFrameBytes: 4 * 1024 * 1024 });
    recorder(ch);
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
    await until(() => serverSide.length === 1, 10_000, 'server side');
    const srv = serverSide[0]!;
    srv.setHandler({ message: () => {}, protocolError: () => {}, ended: () => {}, closed: () => {} });
    // ~900 KB in one frame: more than the peer's window, so it leaves in parts.
    const big = { type: 'HEALTH_RESPONSE' as const, body: { seq: 1, metrics: Object.fromEntries(Array.from({ length: 30_000 }, (_, i) => [`m${String(i).padStart(20, '0')}`, i])), ageMs: 0, verdict: 'SERVING' as const, admin: 'READY' as const, weight: 100 } };
    const wrote = srv.send(big);
    expect(srv.pendingBytes, 'the part flow control did not take yet').to.be.greaterThan(0);
    await wrote;
    // (More metrics than a HEALTH_RESPONSE may carry: the client refuses the message once it has
    // it whole, so count the bytes that arrived.)
    const frameBytes = srv.counters.bytesOut;
    await until(() => ch.counters.bytesIn >= frameBytes, 20_000, 'the big message');
    expect(ch.counters.bytesIn).to.equal(frameBytes);
    expect(srv.pendingBytes).to.equal(0);
    // Now the client stops reading: the server's writes are held, not taken without bound.
    ch.pauseReading();
    let done = false;
    void srv.send(big).then(() => (done = true));
    void srv.send(big).then(() => (done = true));
    await sleep(1500);
    expect(done, 'writes to a peer that does not read stay pending').to.equal(false);
    expect(srv.pendingBytes).to.be.greaterThan(900_000);
    expect(srv.pendingBytes).to.be.lessThan(2 * 1024 * 1024);
  });

  it('a full socket send buffer: the driver stops handing datagrams to the socket, keeps the data in quiche, and resumes when it drains', async () => {
    // On loopback the kernel frees a datagram's buffer as soon as it is sent, so the send queue
    // never fills for real here: the server's socket reports libuv's queue over the limit for a
    // while, as a socket whose kernel buffer is full would.
    const l = await echo();
    const ch = await dial(l.port);
    const seqs: number[] = [];
    ch.setHandler({ message: (m) => m.type === 'HEALTH_RESPONSE' && seqs.push(m.body.seq), protocolError: () => {}, ended: () => {}, closed: () => {} });
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 0 } });
    await until(() => seqs.length === 1, 10_000, 'the first answer');
    const sock = l.endpoint.socket as Socket & { getSendQueueCount(): number };
    const real = sock.getSendQueueCount.bind(sock);
    let full = true;
    sock.getSendQueueCount = () => (full ? MAX_SEND_QUEUE + 1 : real());
    try {
      const sentBefore = l.stats.datagramsOut;
      const N = 500;
      for (let i = 1; i <= N; i++) void ch.send({ type: 'HEALTH_REQUEST', body: { seq: i } });
      await until(() => l.stats.sendStalls > 0, 10_000, 'a send stall');
      await sleep(300);
      // Nothing left the server while its buffer was full, and nothing was queued in memory for the socket.
      expect(l.stats.datagramsOut).to.equal(sentBefore);
      expect(seqs.length).to.equal(1);
      full = false;
      await until(() => seqs.length === N + 1, 20_000, `${N} answers after the buffer drained`);
      expect(seqs.every((s, i) => s === i), 'answers in request order').to.equal(true);
      // The retry is bounded: about one flush attempt per millisecond while full, not a busy loop.
      expect(l.stats.sendStalls).to.be.within(1, 2000);
    } finally {
      sock.getSendQueueCount = real;
    }
  });

  it('a client closed before its handshake is confirmed sends a bounded number of CONNECTION_CLOSEs and the event loop goes on', async () => {
    // quiche keeps such a connection closing (not draining) and returns a new CONNECTION_CLOSE
    // from every send(): the driver looped on it forever (a load balancer that stopped
    // answering under load, when a HELLO timed out right after a handshake).
    const l = await echo();
    const relay = await UdpRelay.start({ port: l.port });
    relays.push(relay);
    const ep = await Endpoint.open('127.0.0.1', 0);
    try {
      const config = quiche.Config.withBoringSslCtx(false, true, null, null, null, null);
      config.setApplicationProtos(['qhcp/1']);
      config.setMaxIdleTimeout(5000);
      config.setInitialMaxData(65536);
      config.setInitialMaxStreamDataBidiLocal(65536);
      config.setInitialMaxStreamDataBidiRemote(65536);
      const conn = ep.connect('127.0.0.1', { host: '127.0.0.1', port: relay.port }, config, 10_000);
      let closedAt = 0;
      conn.events = {
        // Established on the client: its Finished is out, the server's HANDSHAKE_DONE is not in yet.
        // As a load balancer does: a request goes out, the path goes silent, the request times out.
        established: () => {
          relay.set({ cut: true });
          conn.q.streamSend(0, Buffer.alloc(40, 1), false);
          ep.touch(conn);
          setTimeout(() => {
            closedAt = performance.now();
            conn.close(true, 107, 'no ACK within 12 ms');
          }, 12);
        },
        progress: () => {},
        ended: () => {},
      };
      await until(() => closedAt > 0, 10_000, 'the handshake and the close');
      const sent = ep.stats.datagramsOut;
      // The loop is alive (this sleep ends), and the closing connection does not flood the socket.
      await sleep(300);
      expect(ep.stats.datagramsOut - sent, 'datagrams sent after the close').to.be.at.most(MAX_CLOSE_DATAGRAMS);
      expect(conn.closeSends).to.be.within(1, MAX_CLOSE_DATAGRAMS);
    } finally {
      await ep.close();
    }
  });

  it('receive moderation: a shared socket with 64+ connections is read once per hold, and read on after a full batch; every request still answered in order; never below 64; a connection opened meanwhile gets through', async () => {
    const l = await echo({ loopbackWithoutRetry: true });
    const many = await ClientSocket.open('127.0.0.1', { holdMs: 20 });
    const few = await ClientSocket.open('127.0.0.1', { holdMs: 20 });
    const opened: Channel[] = [];
    try {
      expect(many.holdMs).to.equal(20);
      many.holdMs = 500;
      expect(many.holdMs, 'capped').to.equal(MAX_HOLD_MS);
      for (const bad of [Number.NaN, -5, Number.POSITIVE_INFINITY]) {
        many.holdMs = bad;
        expect(many.holdMs, `holdMs = ${bad}: off`).to.equal(0);
      }
      many.holdMs = 20;
      const open = (socket: ClientSocket) => connect({ host: '127.0.0.1', port: l.port, socket, timeoutMs: 20_000 });
      const chs = await Promise.all(Array.from({ length: HOLD_MIN_CONNS + 6 }, () => open(many)));
      const small = await Promise.all(Array.from({ length: 8 }, () => open(few)));
      opened.push(...chs, ...small);
      const answers = (ch: Channel) => recorder(ch).got;
      const got = chs.map(answers);
      const gotSmall = small.map(answers);
      for (let round = 0; round < 3; round++) {
        await Promise.all([...chs, ...small].map((ch, i) => ch.send({ type: 'HEALTH_REQUEST', body: { seq: round * 1000 + i } })));
        await until(() => got.every((g) => g.length === round + 1) && gotSmall.every((g) => g.length === round + 1), 20_000, `round ${round} answered`);
      }
      chs.forEach((_, i) => expect(got[i]!.map((m) => (m.body as { seq: number }).seq)).to.deep.equal([i, 1000 + i, 2000 + i]));
      expect(many.stats.holds, 'reads paused after turns that read').to.be.greaterThan(0);
      // Each round's answers come back in batches (the server reads and answers up to a batch of
      // requests per turn): after a turn that read a full batch the socket is read on, not held.
      expect(many.stats.holdsSkipped, `no hold after a full batch (${RECV_BATCH})`).to.be.greaterThan(0);
      expect(few.stats.holds, `fewer than ${HOLD_MIN_CONNS} connections: never held`).to.equal(0);
      // What the checker starts its checks on (a grid only while the socket holds).
      expect(many.holdingMs).to.equal(20);
      expect(few.holdingMs).to.equal(0);
      // A new connection while the socket holds: its handshake goes through and holds stop meanwhile.
      const late = await open(many);
      opened.push(late);
      const r = recorder(late);
      await late.send({ type: 'HEALTH_REQUEST', body: { seq: 9 } });
      await until(() => r.got.length === 1, 10_000, 'answer on the late connection');
    } finally {
      for (const ch of opened) await ch.close(0, 'done');
      await many.close();
      await few.close();
    }
  });

  it('read-past watch: whenReadPast waits until the socket is read empty, past several full batches; readPast tells a read past a deadline', async () => {
    const sock = await ClientSocket.open('127.0.0.1');
    const raw = createSocket('udp4');
    try {
      await new Promise<void>((r) => raw.bind(0, '127.0.0.1', () => r()));
      await new Promise<void>((r) => raw.connect(sock.port, '127.0.0.1', () => r()));
      // Idle: found empty within a turn or two.
      const t0 = performance.now();
      await new Promise<void>((r) => sock.whenReadPast(t0, r));
      expect(sock.readPast(t0), 'idle socket').to.equal(true);
      // A burst of more than three of libuv's batches lands in the kernel's buffer before the
      // event loop reads anything (a connected UDP socket sends at once; 8 bytes: too short for
      // QUIC, counted as dropped when read).
      const d0 = sock.stats.dropped;
      const n = 3 * RECV_BATCH + 5;
      for (let i = 0; i < n; i++) raw.send(Buffer.alloc(8));
      const sent = performance.now();
      expect(sock.readPast(sent), 'nothing read since the burst').to.equal(false);
      const seen = await new Promise<number>((r) => sock.whenReadPast(sent, () => r(sock.stats.dropped - d0)));
      expect(seen, 'the whole burst read before the watcher ran').to.equal(n);
      expect(sock.readPast(sent)).to.equal(true);
    } finally {
      raw.close();
      await sock.close();
    }
  });

  it('read-past watch under a backlog that never clears: the wait ends MAX_LOCAL_LAG_MS past its deadline with the socket still behind; an older deadline is past at once', async () => {
    const sock = await ClientSocket.open('127.0.0.1');
    const raw = createSocket('udp4');
    let flooding = true;
    const until = Date.now() + 10_000;
    // More datagrams every turn than a turn reads (RECV_BATCH): the socket stays behind.
    const flood = (): void => {
      if (!flooding || Date.now() > until) return;
      for (let i = 0; i < 3 * RECV_BATCH; i++) raw.send(Buffer.alloc(8));
      setImmediate(flood);
    };
    try {
      await new Promise<void>((r) => raw.bind(0, '127.0.0.1', () => r()));
      await new Promise<void>((r) => raw.connect(sock.port, '127.0.0.1', () => r()));
      flood();
      await new Promise((r) => setTimeout(r, 50));
      const recent = performance.now();
      expect(sock.readPast(recent), 'behind: a recent deadline is not read past').to.equal(false);
      expect(sock.readPast(recent - MAX_LOCAL_LAG_MS), 'a deadline MAX_LOCAL_LAG_MS old is past').to.equal(true);
      // A deadline 300 ms short of the bound: not past now, past by the bound while still behind.
      const deadline = performance.now() - MAX_LOCAL_LAG_MS + 300;
      expect(sock.readPast(deadline)).to.equal(false);
      const behindThen = await new Promise<boolean>((r) => sock.whenReadPast(deadline, () => r(!sock.readPast(recent))));
      expect(behindThen, 'the wait ended by its bound, the socket still behind').to.equal(true);
      expect(sock.stats.dropped, 'the flood was read meanwhile').to.be.greaterThan(RECV_BATCH);
    } finally {
      flooding = false;
      raw.close();
      await sock.close();
    }
  });

  it('max_ack_delay from ListenOptions: whole ms within 0..MAX_ACK_DELAY_MS, the default for what is no number', () => {
    // Listener.listen announces wholeMs(maxAckDelayMs ?? ACK_DELAY_MS, MAX_ACK_DELAY_MS, ACK_DELAY_MS)
    // (the wire test reads the announced figure off the handshake).
    const announced = (v: number) => wholeMs(v, MAX_ACK_DELAY_MS, ACK_DELAY_MS);
    expect(announced(16_000)).to.equal(16_000);
    expect(announced(2.4)).to.equal(2);
    expect(announced(-5)).to.equal(0);
    expect(announced(1e9)).to.equal(MAX_ACK_DELAY_MS);
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) expect(announced(bad), String(bad)).to.equal(ACK_DELAY_MS);
    expect(MAX_ACK_DELAY_MS).to.equal(2 ** 14 - 1);
  });

  it('ackDeferMs: whole ms, off for what is no number or negative, clamped so the announced max_ack_delay stays within QUIC\'s limit', async () => {
    const l = await echo();
    const shared = await ClientSocket.open('127.0.0.1', { holdMs: MAX_HOLD_MS });
    try {
      const cases: Array<[number, number, ClientSocket | undefined]> = [
        [Number.NaN, 0, undefined],
        [Number.POSITIVE_INFINITY, 0, undefined],
        [-5, 0, undefined],
        [2.4, 2, undefined],
        [1e9, MAX_ACK_DELAY_MS - ACK_DELAY_MS - MAX_HOLD_MS, undefined],
        [1e9, MAX_ACK_DELAY_MS - ACK_DELAY_MS - MAX_HOLD_MS, shared],
      ];
      for (const [given, deferMs, socket] of cases) {
        const before = serverSide.length;
        const ch = await dial(l.port, { ackDeferMs: given, ...(socket ? { socket } : {}) });
        const { got } = recorder(ch);
        await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
        await until(() => got.length === 1 && serverSide.length === before + 1, 10_000, `an answer (ackDeferMs ${given})`);
        expect(ch.connection.ackDeferMs, String(given)).to.equal(deferMs);
        // What the server was told: ACK_DELAY_MS + the socket's hold + the deferral, never past 2^14 - 1.
        const announced = serverSide[before]!.connection.q.stats().peerMaxAckDelay;
        expect(announced, String(given)).to.equal(Math.min(MAX_ACK_DELAY_MS, ACK_DELAY_MS + (socket ? MAX_HOLD_MS : 0) + deferMs));
        await ch.close(0, 'done');
      }
    } finally {
      await shared.close();
    }
  });

  it('holdFor: 1/50 of the shortest interval, at most MAX_HOLD_MS', () => {
    expect(holdFor(1000)).to.equal(MAX_HOLD_MS);
    expect(holdFor(100)).to.equal(2);
    expect(holdFor(30)).to.equal(0);
  });

  it('IPv6: a listener on ::1, reached from its own socket and from a dual-stack shared socket, next to IPv4', async () => {
    const l6 = await echo({ host: '::1' });
    const l4 = await echo();
    const a = await dial(l6.port, { host: '::1' });
    const ra = recorder(a);
    await a.send({ type: 'HEALTH_REQUEST', body: { seq: 6 } });
    await until(() => ra.got.length === 1, 10_000, 'answer over ::1');
    expect(a.remote).to.equal(`[::1]:${l6.port}`);
    const shared = await ClientSocket.open('::');
    try {
      const b = await connect({ host: '::1', port: l6.port, socket: shared, timeoutMs: 10_000 });
      const c = await connect({ host: '127.0.0.1', port: l4.port, socket: shared, timeoutMs: 10_000 });
      clients.push(b, c);
      const rb = recorder(b);
      const rc = recorder(c);
      await b.send({ type: 'HEALTH_REQUEST', body: { seq: 7 } });
      await c.send({ type: 'HEALTH_REQUEST', body: { seq: 8 } });
      await until(() => rb.got.length === 1 && rc.got.length === 1, 10_000, 'answers on both families');
      expect(c.remote).to.equal(`127.0.0.1:${l4.port}`);
      expect(serverSide.map((s) => s.remote).find((r) => r.startsWith('[::1]:'))).to.not.equal(undefined);
    } finally {
      for (const ch of clients.splice(0)) await ch.close(0, 'done');
      await shared.close();
    }
  });

  it('ICMP port unreachable fails a connect to a dead port at once, with that reason', async () => {
    const s = await udp();
    const port = s.address().port;
    s.close();
    sockets.splice(sockets.indexOf(s), 1);
    const err = await connect({ host: '127.0.0.1', port, timeoutMs: 20_000 }).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err).to.have.property('code', 'QHCP_ERR_CONNECT');
    expect(err!.message).to.match(/ICMP port unreachable/);
  });

  it('a peer that dies under a shared socket (no close sent): the port probe finds it unreachable, the connection fails with that reason', async () => {
    const l = await echo({ idleTimeoutMs: 30_000 });
    const shared = await ClientSocket.open('::');
    try {
      const ch = await connect({ host: '127.0.0.1', port: l.port, socket: shared, timeoutMs: 10_000, idleTimeoutMs: 30_000 });
      const { got, closed } = recorder(ch);
      await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
      await until(() => got.length === 1, 10_000, 'first answer');
      // As kill -9 would: the socket goes away, no CONNECTION_CLOSE is sent.
      l.endpoint.socket.close();
      listeners.splice(listeners.indexOf(l), 1);
      await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 2 } });
      const end = await closed;
      expect(end.by).to.equal('error');
      expect(end.reason).to.match(/ICMP port unreachable/);
      expect(shared.stats.portsUnreachable).to.equal(1);
      // A new connection to the dead port on the shared socket fails the same way, long before its handshake timeout.
      const err = await connect({ host: '127.0.0.1', port: l.port, socket: shared, timeoutMs: 30_000 }).then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      expect(err?.message).to.match(/ICMP port unreachable/);
    } finally {
      await shared.close();
    }
  });

  it('one timer structure: deadlines are kept in order as they move, and removed ones never fire', async () => {
    const fired: number[] = [];
    type Item = { id: number; deadline: number; heapIndex: number };
    const items: Item[] = Array.from({ length: 200 }, (_, id) => ({ id, deadline: Infinity, heapIndex: -1 }));
    const heap: DeadlineHeap<Item> = new DeadlineHeap<Item>((now) => {
      for (let top = heap.peek(); top && top.deadline <= now + 1; top = heap.peek()) {
        fired.push(top.id);
        heap.remove(top);
      }
    });
    const t0 = performance.now();
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
    for (const it of items) heap.set(it, t0 + 50 + rand() * 200);
    for (const it of items.slice(0, 100)) heap.set(it, t0 + 50 + rand() * 200); // moved
    for (const it of items.slice(150)) heap.remove(it); // cancelled
    expect(heap.size).to.equal(150);
    const expected = items.slice(0, 150).sort((a, b) => a.deadline - b.deadline).map((i) => i.id);
    await until(() => fired.length === 150, 5_000, 'all deadlines');
    await sleep(50);
    expect(fired).to.deep.equal(expected);
    expect(heap.size).to.equal(0);
  });
});
