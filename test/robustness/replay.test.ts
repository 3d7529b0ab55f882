/**
 * Issue 13, item 7: replayed QUIC Initial packets carrying Retry tokens must not hold the
 * agent's handshake slots. Real processes on loopback: an agent with two handshake slots, an
 * attacker that starts handshakes through a UDP relay (so it can stall them and capture the
 * Initials that carry the agent's Retry tokens), then replays those Initials without pause, from
 * the very address and port each token was given to and from fresh sockets, while a real load
 * balancer checks the agent. Tokens are spent once, bound to address and port, and expire after
 * 10 s, so the load balancer must come UP while the replay goes on, and stay UP.
 */
import { expect } from 'chai';
import { createSocket, type Socket } from 'node:dgram';
import { connect } from '../../core/transport/quic.ts';
import { UdpRelay } from '../helpers/udp-relay.ts';
import { startServer, startLoadBalancer, waitForState, statusOf, stopAll, sleep } from '../helpers/procs.ts';

describe('Robustness: replayed Initials (Retry tokens)', function () {
  this.timeout(120_000);
  let relay: UdpRelay | undefined;
  const sockets: Socket[] = [];

  afterEach(async () => {
    for (const s of sockets.splice(0)) s.close();
    await relay?.close();
    relay = undefined;
    await stopAll();
  });

  it('a replaying attacker does not keep the load balancer from seeing the agent UP', async () => {
    const { proc: agent, port, address } = await startServer({ args: ['--max-pending-handshakes', '2', '--hello-timeout', '2'] });
    relay = await UdpRelay.start({ port });
    const captured = new Map<string, Buffer>();
    // Let the Retry through (down datagram 1), keep the client's Initial with the token (up
    // datagram 2), drop everything else the agent sends: each handshake stalls in its slot.
    relay.filter = (dir, data, flow) => {
      if (dir === 'up' && flow.index === 2) captured.set(flow.client, Buffer.from(data));
      return dir === 'up' || flow.index <= 1;
    };
    const stalled = await Promise.allSettled(Array.from({ length: 6 }, () => connect({ host: '127.0.0.1', port: relay!.port, timeoutMs: 1500 })));
    expect(stalled.every((s) => s.status === 'rejected'), 'the attacker handshakes never complete').to.equal(true);
    expect(captured.size, 'token-bearing Initials captured').to.be.at.least(4);
    await agent.waitFor(/handshake refused .*too many handshakes in progress/, 10_000);

    // Replay every captured Initial every 50 ms: from its own flow (the address and port its
    // token is bound to) and from a fresh socket each round (bounded: 40 s at most).
    const others = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const s = createSocket('udp4');
        await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
        sockets.push(s);
        return s;
      }),
    );
    let replays = 0;
    let attacking = true;
    const attackEnd = Date.now() + 40_000;
    const attack = (async () => {
      while (attacking && Date.now() < attackEnd) {
        for (const [client, initial] of captured) {
          if (relay!.inject(client, initial)) replays++;
          for (const s of others) {
            s.send(initial, port, '127.0.0.1');
            replays++;
          }
        }
        await sleep(50);
      }
    })();

    try {
      const lb = await startLoadBalancer([address], { interval: 0.5, fail: 3, reconnect: 0.5 });
      // Under attack: the agent's slots are free again once the stalled handshakes time out
      // (2 s) and every captured token has been spent or has expired (10 s).
      await waitForState(lb.port, address, 'UP', 40_000);
      expect(attacking && Date.now() < attackEnd, 'the replay was still running when the load balancer saw the agent UP').to.equal(true);
      const upAt = (await statusOf(lb.port, address)).checks;
      await sleep(3000);
      const st = await statusOf(lb.port, address);
      expect(st.state, `still UP while the replay goes on (${st.lastError ?? ''})`).to.equal('UP');
      expect(st.checks).to.be.greaterThan(upAt);
      expect(replays).to.be.greaterThan(500);
    } finally {
      attacking = false;
      await attack;
    }
    expect(agent.running).to.equal(true);
  });
});
