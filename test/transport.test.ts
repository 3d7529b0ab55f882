/**
 * The transport and session layers over a real QUIC connection on 127.0.0.1: a good exchange,
 * and peers that send garbage, break the DFA order, or say nothing, while another client is
 * served at the same time.
 */
import { expect } from 'chai';
import { AgentServer } from '../core/roles/agent.ts';
import { buildConfig } from '../core/config/config.ts';
import { connect, type ChannelClose } from '../core/transport/quic.ts';
import { connectRaw, type RawChannel } from './helpers/raw-channel.ts';
import { Session } from '../core/protocol/session.ts';
import { encodeFrame } from '../core/protocol/codec.ts';
import { WIRE_ERRORS, PeerError } from '../core/errors.ts';
import { createLogger } from '../core/util/log.ts';
import systemMetrics from '../plugins/metrics/system.ts';
import { build } from '../core/testing/index.ts';
import type { Message } from '../core/protocol/messages.ts';

/** A raw peer: a channel with no session, recording what the server sends and how it closes. */
async function rawPeer(port: number): Promise<{ ch: RawChannel; got: Message[]; closed: Promise<ChannelClose> }> {
  const ch = await connectRaw({ host: '127.0.0.1', port, timeoutMs: 5000 });
  const got: Message[] = [];
  const closed = new Promise<ChannelClose>((resolve) =>
    ch.setHandler({ message: (m) => got.push(m), protocolError: () => {}, ended: () => {}, closed: resolve }),
  );
  return { ch, got, closed };
}

/** An honest checker session: HELLO then HEALTH_REQUESTs. */
async function honest(port: number): Promise<Session> {
  // A RawChannel underneath: one test sends a second HELLO past the session's DFA.
  const s = new Session(await connectRaw({ host: '127.0.0.1', port, timeoutMs: 5000 }), { role: 'client', onMessage: () => {} });
  const ack = await s.request('HELLO', { versions: [1], role: 'checker', node: 'test' }, 5000);
  expect(ack.type).to.equal('ACK');
  return s;
}

async function healthy(s: Session, seq: number): Promise<void> {
  const r = await s.request('HEALTH_REQUEST', { seq }, 5000);
  expect(r.type).to.equal('HEALTH_RESPONSE');
  if (r.type === 'HEALTH_RESPONSE') {
    expect(r.body.seq).to.equal(seq);
    expect(r.body.metrics).to.have.property('cpu').that.is.a('number');
  }
}

describe('Transport and Session over QUIC', function () {
  this.timeout(30_000);
  let server: AgentServer;
  let port: number;

  before(async () => {
    const { config } = buildConfig({ serverIp: '127.0.0.1', serverPort: 0, helloTimeout: 0.5 }, undefined, {});
    server = new AgentServer(config, createLogger({ level: 'silent' }));
    await server.loadPlugins([build(systemMetrics)]);
    await server.start();
    port = server.port;
  });
  after(async () => server.stop());

  it('exchanges HELLO/ACK and HEALTH_REQUEST/HEALTH_RESPONSE', async () => {
    const s = new Session(await connect({ host: '127.0.0.1', port, timeoutMs: 5000 }), { role: 'client', onMessage: () => {} });
    const ack = await s.request('HELLO', { versions: [1], role: 'checker', node: 'lb-test' }, 5000);
    expect(ack).to.deep.include({ type: 'ACK' });
    if (ack.type === 'ACK') {
      expect(ack.body.version).to.equal(1);
      expect(ack.body.role).to.equal('agent');
      expect(ack.body.metrics).to.include.members(['cpu', 'memory', 'load1']);
    }
    expect(s.state).to.equal('READY');
    await healthy(s, 7);
    const t = await s.request('TERMINATE', {}, 5000);
    expect(t.type).to.equal('TERMINATE_ACK');
    expect((await s.closed()).code).to.equal(0);
  });

  const cases: Array<{ name: string; bytes: () => Buffer; kind: keyof typeof WIRE_ERRORS }> = [
    { name: 'garbage bytes', bytes: () => Buffer.from('this is not a QHCP frame at all'), kind: 'UNSUPPORTED_VERSION' },
    { name: 'a frame whose payload is not JSON', bytes: () => Buffer.from([1, 1, 0, 0, 0, 3, 0x7b, 0x7b, 0x7b]), kind: 'MALFORMED_FRAME' },
    { name: 'an unknown message type', bytes: () => Buffer.from([1, 0xee, 0, 0, 0, 2, 0x7b, 0x7d]), kind: 'UNKNOWN_MESSAGE_TYPE' },
    { name: 'HEALTH_REQUEST before HELLO', bytes: () => encodeFrame({ type: 'HEALTH_REQUEST', body: { seq: 1 } }), kind: 'UNEXPECTED_MESSAGE' },
    { name: 'HELLO with a bad field', bytes: () => encodeFrame({ type: 'HELLO', body: { versions: [1], role: 'boss', node: 'x' } as never }), kind: 'INVALID_MESSAGE' },
  ];

  for (const c of cases) {
    it(`answers ${c.name} with ERROR ${WIRE_ERRORS[c.kind].wire} ${c.kind} and closes, while serving another client`, async () => {
      const good = await honest(port);
      const bad = await rawPeer(port);
      await bad.ch.sendRaw(c.bytes());
      const closed = await bad.closed;
      const err = bad.got.find((m) => m.type === 'ERROR');
      // The ERROR frame and the close code carry the same wire code; either suffices per spec.
      const code = err && err.type === 'ERROR' ? err.body.code : closed.code;
      expect(code).to.equal(WIRE_ERRORS[c.kind].wire);
      await healthy(good, 1);
      await healthy(good, 2);
      good.close();
    });
  }

  it('closes a peer that sends nothing with HELLO_TIMEOUT, while serving another client', async () => {
    const good = await honest(port);
    const bad = await rawPeer(port);
    const closed = await bad.closed;
    expect(closed.code).to.equal(WIRE_ERRORS.HELLO_TIMEOUT.wire);
    await healthy(good, 3);
    good.close();
  });

  it('rejects a second HELLO with UNEXPECTED_MESSAGE (PeerError on the client)', async () => {
    const s = await honest(port);
    await (s.channel as RawChannel).sendRaw(encodeFrame({ type: 'HELLO', body: { versions: [1], role: 'checker', node: 'again' } }));
    const end = await s.closed();
    expect(end.error).to.be.instanceOf(PeerError);
    expect(end.code).to.equal(WIRE_ERRORS.UNEXPECTED_MESSAGE.wire);
  });

  it('rejects a HELLO offering no supported version with UNSUPPORTED_VERSION', async () => {
    const s = new Session(await connect({ host: '127.0.0.1', port, timeoutMs: 5000 }), { role: 'client', onMessage: () => {} });
    const err = await s.request('HELLO', { versions: [9], role: 'checker', node: 'x' }, 5000).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(PeerError);
    expect((err as PeerError).kind).to.equal('UNSUPPORTED_VERSION');
  });

  it('refuses PICK on an agent with UNSUPPORTED_REQUEST', async () => {
    const s = await honest(port);
    const err = await s.request('PICK', { seq: 1 }, 5000).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((err as PeerError).kind).to.equal('UNSUPPORTED_REQUEST');
  });
});
