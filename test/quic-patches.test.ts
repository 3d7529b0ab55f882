/**
 * Our patches to @matrixai/quic (patches/@matrixai+quic+2.0.9.patch, applied by patch-package
 * on install; docs/benchmarks.md has what each bought):
 *   1. QUICConnection.recv serialises packets with a promise chain instead of Lock.withF;
 *   2. QUICConnection.send hands datagrams to its client's or server's socket directly
 *      (`sendDirect`) instead of dispatching an event per datagram.
 * These tests check the patches are in place and that what they replaced still holds: packets
 * processed in order, nothing lost in a burst, closes and errors still reported.
 */
import { expect } from 'chai';
import { Listener, connect, type Channel, type ChannelClose } from '../core/transport/quic.ts';
import { selfSigned } from '../core/transport/tls.ts';
import type { Message } from '../core/protocol/messages.ts';

type Patched = { sendDirect?: unknown; recvTail?: unknown };
/** The QUICConnection under a channel (a private field: tests only). */
const connOf = (ch: Channel) => (ch as unknown as { conn: Patched }).conn;

describe('@matrixai/quic patches', function () {
  this.timeout(30_000);
  let listener: Listener | undefined;
  const serverSide: Channel[] = [];
  const clients: Channel[] = [];

  /** A listener that answers each HEALTH_REQUEST with a HEALTH_RESPONSE of the same seq. */
  async function echo(): Promise<Listener> {
    const tls = await selfSigned();
    return Listener.listen({
      host: '127.0.0.1',
      port: 0,
      cert: tls.cert,
      key: tls.key,
      onChannel: (ch) => {
        serverSide.push(ch);
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
  }

  afterEach(async () => {
    for (const c of clients.splice(0)) await c.close(0, 'test done');
    serverSide.length = 0;
    await listener?.stop();
    listener = undefined;
  });

  it('are applied: both ends of a connection send through sendDirect, and recv keeps its queue field', async () => {
    listener = await echo();
    const ch = await connect({ host: '127.0.0.1', port: listener.port, timeoutMs: 10_000 });
    clients.push(ch);
    const got: Message[] = [];
    ch.setHandler({ message: (m) => got.push(m), protocolError: () => {}, ended: () => {}, closed: () => {} });
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
    for (let i = 0; i < 200 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 25));
    expect(got.map((m) => m.type)).to.deep.equal(['HEALTH_RESPONSE']);
    expect(typeof connOf(ch).sendDirect, 'client connection').to.equal('function');
    expect(typeof connOf(serverSide[0]!).sendDirect, 'server connection').to.equal('function');
    expect(connOf(ch)).to.have.property('recvTail');
  });

  it('a burst of 3000 requests on one connection: every answer arrives, in order, intact', async () => {
    listener = await echo();
    const ch = await connect({ host: '127.0.0.1', port: listener.port, timeoutMs: 10_000 });
    clients.push(ch);
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
    // Not awaited one by one: many packets in flight each way, so recv calls overlap.
    await Promise.all(Array.from({ length: N }, (_, i) => ch.send({ type: 'HEALTH_REQUEST', body: { seq: i } })));
    for (let i = 0; i < 400 && seqs.length < N; i++) await new Promise((r) => setTimeout(r, 25));
    expect(bad).to.equal(0);
    expect(seqs.length).to.equal(N);
    expect(seqs.every((s, i) => s === i), 'answers in request order').to.equal(true);
  });

  it('a close with an application code still reaches the peer (the error path still dispatches events)', async () => {
    listener = await echo();
    const ch = await connect({ host: '127.0.0.1', port: listener.port, timeoutMs: 10_000 });
    clients.push(ch);
    const closed = new Promise<ChannelClose>((resolve) => ch.setHandler({ message: () => {}, protocolError: () => {}, ended: () => {}, closed: resolve }));
    await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
    for (let i = 0; i < 200 && serverSide.length === 0; i++) await new Promise((r) => setTimeout(r, 25));
    await serverSide[0]!.close(301, 'shutting down');
    const info = await Promise.race([closed, new Promise<undefined>((r) => setTimeout(() => r(undefined), 10_000))]);
    expect(info, 'close seen by the client').to.not.equal(undefined);
    // The transport files it under 'peer' or 'error' depending on which library event comes first;
    // what the patches must not lose is the code and the reason.
    expect(info!.by).to.be.oneOf(['peer', 'error']);
    expect(info!.code).to.equal(301);
    expect(info!.reason).to.equal('shutting down');
  });
});
