/**
 * The peer's maximum frame size is learnable (docs/protocol.md, "Framing"): a real load
 * balancer's query port says its limit in ACK, learns a client's from HELLO, and never sends a
 * frame larger than that: a client that announced 1024 bytes gets its STATUS in pages that fit,
 * where a client that announced nothing (65536) gets it in one.
 */
import { expect } from 'chai';
import { connect } from '../../core/transport/quic.ts';
import { Session } from '../../core/protocol/session.ts';
import { SUPPORTED_VERSIONS, type Message } from '../../core/protocol/messages.ts';
import { startLoadBalancer, stopAll, freePort } from '../helpers/procs.ts';

type Of<K extends Message['type']> = Extract<Message, { type: K }>;

async function querySession(port: number, maxFrameBytes?: number): Promise<{ s: Session; ack: Of<'ACK'> }> {
  const s = new Session(await connect({ host: '127.0.0.1', port, timeoutMs: 10_000 }), { role: 'client', onMessage: () => {} });
  const ack = (await s.request('HELLO', { versions: [...SUPPORTED_VERSIONS], role: 'query', node: 'frame-limit', ...(maxFrameBytes ? { maxFrameBytes } : {}) }, 10_000)) as Of<'ACK'>;
  return { s, ack };
}

describe('maxFrameBytes in HELLO and ACK (real load balancer query port)', function () {
  this.timeout(90_000);
  after(stopAll);

  it("the query port says its limit in ACK; a STATUS_RESPONSE never exceeds the client's announced 1024 bytes", async () => {
    // Eight servers nobody answers on: their STATUS rows alone are well over 1024 bytes.
    const servers = await Promise.all(Array.from({ length: 8 }, async () => `127.0.0.1:${await freePort()}`));
    const lb = await startLoadBalancer(servers, { interval: 5 });
    const big = await querySession(lb.port);
    expect(big.ack.body.maxFrameBytes).to.equal(65536);
    const whole = (await big.s.request('STATUS', { seq: 1 }, 10_000)) as Of<'STATUS_RESPONSE'>;
    expect(whole.body.servers).to.have.length(8);
    expect(Buffer.byteLength(JSON.stringify(whole.body))).to.be.greaterThan(1024);
    big.s.close('done');

    const small = await querySession(lb.port, 1024);
    const seen: string[] = [];
    let offset = 0;
    for (let i = 0; i < 20; i++) {
      const page = (await small.s.request('STATUS', { seq: i + 1, ...(offset ? { offset } : {}) }, 10_000)) as Of<'STATUS_RESPONSE'>;
      expect(Buffer.byteLength(JSON.stringify(page.body)), 'page fits the announced limit').to.be.at.most(1024);
      seen.push(...page.body.servers.map((x) => x.address));
      if (page.body.next === undefined) break;
      offset = page.body.next;
    }
    expect(seen.sort()).to.deep.equal(whole.body.servers.map((x) => x.address).sort());
    small.s.close('done');
  });
});
