/**
 * Bad input on the agent's port and on the load balancer's query port, from real peers over
 * QUIC on loopback. For every case: the offender gets the ERROR code the spec names (or is
 * closed / ignored as the spec says), the attacked process stays up, and honest clients that
 * are connected the whole time (a checker session to the agent, a STATUS session to the load
 * balancer, and the load balancer's own checks) keep getting correct answers.
 */
import { expect } from 'chai';
import { createSocket } from 'node:dgram';
import { encodeFrame, FrameDecoder, DEFAULT_MAX_FRAME_BYTES } from '../../core/protocol/codec.ts';
import { codeName } from '../../core/protocol/session.ts';
import { ProtocolError } from '../../core/errors.ts';
import { MESSAGE_TYPES, type Message } from '../../core/protocol/messages.ts';
import { sleep } from '../helpers/procs.ts';
import { RawPeer, rawFrame, frameOf, HELLO_CHECKER, HELLO_QUERY } from '../helpers/rawpeer.ts';
import { startRig, type Rig } from './honest.ts';

const HELLO_TIMEOUT_S = 1;

interface Target {
  name: string;
  role: 'server' | 'lb';
  hello: () => Buffer;
  /** A valid request of this port's session kind. */
  request: (seq: number) => Message;
  answer: Message['type'];
  /** A valid request this port does not serve (108). */
  foreign: Message;
  maxFrameBytes: number;
}

const TARGETS: Target[] = [
  {
    name: "the agent's port",
    role: 'server',
    hello: HELLO_CHECKER,
    request: (seq) => ({ type: 'HEALTH_REQUEST', body: { seq } }),
    answer: 'HEALTH_RESPONSE',
    foreign: { type: 'PICK', body: { seq: 1 } },
    maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
  },
  {
    name: "the load balancer's query port",
    role: 'lb',
    hello: HELLO_QUERY,
    request: (seq) => ({ type: 'STATUS', body: { seq } }),
    answer: 'STATUS_RESPONSE',
    foreign: { type: 'HEALTH_REQUEST', body: { seq: 1 } },
    // The query port reads with the load balancer's maxFrameBytes (docs/protocol.md, Framing): the
    // rig runs the default. (4 MiB stood here: a random case declaring a length between the two
    // expected HELLO_TIMEOUT where the port rightly answered FRAME_TOO_LARGE.)
    maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
  },
];

/** A small deterministic PRNG so a failing random case can be replayed. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x100000000;
  };
}

/** What the spec's decoding steps say about `bytes` as the first thing on a stream. */
function expectedFor(bytes: Buffer, maxFrameBytes: number): string {
  const d = new FrameDecoder(maxFrameBytes);
  try {
    const msgs = d.push(bytes);
    // A whole valid frame that is not HELLO is out of order; an incomplete one waits for HELLO.
    if (msgs.length > 0) return msgs[0]!.type === 'HELLO' ? 'ACK' : 'UNEXPECTED_MESSAGE';
    return 'HELLO_TIMEOUT';
  } catch (e) {
    return (e as ProtocolError).kind;
  }
}

async function refusedWith(peer: RawPeer, kind: string, timeoutMs = 10_000): Promise<string> {
  const r = await peer.closedWith(timeoutMs);
  expect(codeName(r.code), `close reason: ${r.reason}`).to.equal(kind);
  expect(r.reason).to.be.a('string').and.not.equal('');
  return r.reason;
}

for (const t of TARGETS) {
  describe(`Robustness: bad input on ${t.name}`, function () {
    this.timeout(60_000);
    let rig: Rig;
    let port: number;
    const open = (extra: Partial<Parameters<typeof RawPeer.open>[0]> = {}) => RawPeer.open({ port, ...extra });

    before(async () => {
      const hello = ['--hello-timeout', String(HELLO_TIMEOUT_S)];
      // The query port's default rate (100 queries/s) would make the 3000-request burst take
      // 30 s; the rate limiter has tests of its own (query-flood.test.ts).
      rig = await startRig({ serverArgs: hello, lbArgs: [...hello, '--query-rate', '3000', '--query-rate-total', '6000'] });
      port = t.role === 'server' ? rig.serverPort : rig.lbPort;
    });

    afterEach(async () => rig.expectHealthy());

    after(async () => {
      // The load balancer never saw its server go DOWN during the attacks.
      const bad = rig?.badTransitions() ?? [];
      await rig?.stop();
      expect(bad).to.deep.equal([]);
    });

    it('random bytes on the control stream: the ERROR the decoding steps name', async () => {
      const rand = prng(0x5eed + port);
      const cases = Array.from({ length: 12 }, (_, i) => {
        const len = 1 + Math.floor(rand() * 200);
        const b = Buffer.alloc(len);
        for (let j = 0; j < len; j++) b[j] = Math.floor(rand() * 256);
        // Half the cases get a valid version byte so the later decoding steps are reached too.
        if (i % 2 === 0) b[0] = 1;
        if (i % 4 === 0 && len > 1) b[1] = 1 + Math.floor(rand() * 15);
        return b;
      });
      await Promise.all(
        cases.map(async (bytes) => {
          const peer = await open();
          await peer.send(bytes);
          const want = expectedFor(bytes, t.maxFrameBytes);
          await refusedWith(peer, want);
        }),
      );
    });

    it('a frame declaring a huge length: FRAME_TOO_LARGE at once, without waiting for the payload', async () => {
      const peer = await open();
      await peer.send(rawFrame(MESSAGE_TYPES.HELLO, '', { length: 0xffffffff }));
      await refusedWith(peer, 'FRAME_TOO_LARGE');
      const justOver = await open();
      await justOver.send(Buffer.concat([t.hello(), rawFrame(MESSAGE_TYPES.STATUS, '{', { length: t.maxFrameBytes + 1 })]));
      await refusedWith(justOver, 'FRAME_TOO_LARGE');
    });

    it('a HELLO trickled one byte at a time is reassembled and answered', async () => {
      const peer = await open();
      await peer.trickle(t.hello(), 2);
      await peer.waitFor('ACK');
      await peer.send(encodeFrame(t.request(1)));
      await peer.waitFor(t.answer);
      expect(peer.isClosed).to.equal(false);
      await peer.close();
    });

    it('a bad frame trickled one byte at a time gets its ERROR', async () => {
      const peer = await open();
      await peer.trickle(Buffer.concat([t.hello(), frameOf('HEALTH_REQUEST', { seq: 'one' })]), 1);
      await refusedWith(peer, 'INVALID_MESSAGE');
    });

    it('a HELLO trickled slower than the HELLO timeout is cut off (no slowloris)', async () => {
      const peer = await open();
      const trickling = peer.trickle(t.hello(), 40); // > 2 s for the whole HELLO, timeout is 1 s
      await refusedWith(peer, 'HELLO_TIMEOUT');
      await trickling;
    });

    it('thousands of requests in one burst are all answered, in order', async () => {
      const peer = await open();
      await peer.send(t.hello());
      await peer.waitFor('ACK');
      const n = 3000;
      const burst = Buffer.concat(Array.from({ length: n }, (_, i) => encodeFrame(t.request(i + 1))));
      await peer.send(burst);
      const answers = () => peer.received.filter((m) => m.type === t.answer);
      for (let i = 0; i < 300 && answers().length < n && !peer.isClosed; i++) await sleep(100);
      const got = answers();
      expect(got).to.have.length(n);
      expect(got.map((m) => (m.body as { seq: number }).seq)).to.deep.equal(Array.from({ length: n }, (_, i) => i + 1));
      await peer.close();
    });

    it('a peer that floods requests and never reads the answers is throttled by backpressure', async () => {
      const peer = await open();
      await peer.send(t.hello());
      await peer.waitFor('ACK');
      peer.channel.pauseReading();
      const batch = Buffer.concat(Array.from({ length: 1000 }, (_, i) => encodeFrame(t.request(i + 1))));
      let sentBatches = 0;
      let blocked = false;
      // Bounded: at most 400 batches (~6-8 MB) or 20 s. Without backpressure every write is taken.
      const end = Date.now() + 20_000;
      while (sentBatches < 400 && Date.now() < end) {
        const r = await Promise.race([peer.send(batch).then(() => 'sent'), sleep(3000).then(() => 'blocked')]);
        if (r === 'blocked') {
          blocked = true;
          break;
        }
        sentBatches++;
      }
      expect(blocked, `the server kept reading after ${sentBatches} batches of 1000 requests`).to.equal(true);
      await peer.close();
    });

    it('an unknown message type: UNKNOWN_MESSAGE_TYPE, before and after HELLO', async () => {
      const before = await open();
      await before.send(rawFrame(0x42, '{}'));
      await refusedWith(before, 'UNKNOWN_MESSAGE_TYPE');
      const after = await open();
      await after.send(t.hello());
      await after.waitFor('ACK');
      await after.send(rawFrame(0xff, '{}'));
      await refusedWith(after, 'UNKNOWN_MESSAGE_TYPE');
    });

    const deep = (levels: number) => `${'['.repeat(levels)}${']'.repeat(levels)}`;
    const fieldCases: Array<{ name: string; frame: () => Buffer; afterHello: boolean; kind: string }> = [
      { name: 'a wrong field type (seq as a string)', frame: () => frameOf('HEALTH_REQUEST', { seq: 'one' }), afterHello: true, kind: 'INVALID_MESSAGE' },
      { name: 'a missing field (HELLO without versions)', frame: () => frameOf('HELLO', { role: 'checker', node: 'x' }), afterHello: false, kind: 'INVALID_MESSAGE' },
      { name: 'an unknown extra field', frame: () => frameOf('HELLO', { versions: [1], role: 'checker', node: 'x', admin: true }), afterHello: false, kind: 'INVALID_MESSAGE' },
      { name: 'an oversized field (a 5000-character node name)', frame: () => frameOf('HELLO', { versions: [1], role: 'checker', node: 'n'.repeat(5000) }), afterHello: false, kind: 'INVALID_MESSAGE' },
      { name: 'an oversized list (300 versions)', frame: () => frameOf('HELLO', { versions: Array.from({ length: 300 }, (_, i) => i + 1), role: 'checker', node: 'x' }), afterHello: false, kind: 'INVALID_MESSAGE' },
      { name: 'a deeply nested field (20000 levels)', frame: () => rawFrame(MESSAGE_TYPES.HEALTH_REQUEST, `{"seq":${deep(20000)}}`), afterHello: true, kind: 'INVALID_MESSAGE' },
      { name: 'a deeply nested unknown field (25000 levels)', frame: () => rawFrame(MESSAGE_TYPES.HELLO, `{"versions":[1],"role":"checker","node":"x","x":${deep(25000)}}`), afterHello: false, kind: 'INVALID_MESSAGE' },
      { name: 'a payload that is not JSON', frame: () => rawFrame(MESSAGE_TYPES.HELLO, '{"versions":[1],'), afterHello: false, kind: 'MALFORMED_FRAME' },
      { name: 'a payload that is a JSON array', frame: () => rawFrame(MESSAGE_TYPES.HELLO, '[1,2,3]'), afterHello: false, kind: 'MALFORMED_FRAME' },
      { name: 'a payload that is not UTF-8', frame: () => rawFrame(MESSAGE_TYPES.HELLO, Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d])), afterHello: false, kind: 'MALFORMED_FRAME' },
      { name: 'a frame version byte 2', frame: () => rawFrame(MESSAGE_TYPES.HELLO, '{}', { version: 2 }), afterHello: false, kind: 'UNSUPPORTED_VERSION' },
      { name: 'HELLO offering only version 9', frame: () => frameOf('HELLO', { versions: [9], role: 'checker', node: 'x' }), afterHello: false, kind: 'UNSUPPORTED_VERSION' },
    ];
    for (const c of fieldCases) {
      it(`${c.name}: ${c.kind}`, async () => {
        const peer = await open();
        if (c.afterHello) {
          await peer.send(t.hello());
          await peer.waitFor('ACK');
        }
        await peer.send(c.frame());
        await refusedWith(peer, c.kind);
      });
    }

    it(`a request this port does not serve (${t.foreign.type}): UNSUPPORTED_REQUEST`, async () => {
      const peer = await open();
      await peer.send(t.hello());
      await peer.waitFor('ACK');
      await peer.send(encodeFrame(t.foreign));
      await refusedWith(peer, 'UNSUPPORTED_REQUEST');
    });

    it('a second stream beside the control stream: EXTRA_STREAM', async () => {
      const peer = await open();
      await peer.send(t.hello());
      await peer.waitFor('ACK');
      await peer.openExtraStream();
      await refusedWith(peer, 'EXTRA_STREAM');
    });

    it('the control stream reset half-way through a frame: TRUNCATED_FRAME', async () => {
      const peer = await open();
      await peer.send(t.hello());
      await peer.waitFor('ACK');
      const frame = encodeFrame(t.request(1));
      await peer.send(frame.subarray(0, frame.length - 3));
      await sleep(100);
      await peer.resetStream();
      await refusedWith(peer, 'TRUNCATED_FRAME');
    });

    it('a wrong ALPN is refused in the TLS handshake', async () => {
      let err: unknown;
      try {
        const p = await open({ alpn: 'h3', timeoutMs: 3000 });
        await p.close();
      } catch (e) {
        err = e;
      }
      expect(err, 'connect with ALPN h3 must fail').to.have.property('code', 'QHCP_ERR_CONNECT');
    });

    it('plain non-QUIC UDP datagrams are ignored', async () => {
      const sock = createSocket('udp4');
      const rand = prng(0xdead + port);
      try {
        for (let i = 0; i < 2000; i++) {
          const b = Buffer.alloc(1 + Math.floor(rand() * 1300));
          for (let j = 0; j < b.length; j++) b[j] = Math.floor(rand() * 256);
          // Some look like QUIC long-header packets (first bits 11), some like short headers.
          if (i % 3 === 0) b[0] = (b[0]! | 0xc0) >>> 0;
          if (i % 3 === 1) b[0] = (b[0]! & 0x7f) | 0x40;
          sock.send(b, port, '127.0.0.1');
          if (i % 200 === 0) await sleep(5);
        }
        sock.send(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), port, '127.0.0.1');
        sock.send(Buffer.alloc(0), port, '127.0.0.1');
        await sleep(300);
      } finally {
        sock.close();
      }
      // A new honest connection still works too.
      const peer = await open();
      await peer.send(t.hello());
      await peer.waitFor('ACK');
      await peer.close();
    });

    it('a client that completes the QUIC handshake but never sends HELLO is closed after the HELLO timeout', async () => {
      const peer = await open();
      const reason = await refusedWith(peer, 'HELLO_TIMEOUT', HELLO_TIMEOUT_S * 1000 + 8000);
      expect(reason).to.match(/HELLO/);
    });
  });
}
