/**
 * 20% datagram loss between a real load balancer and a real agent (UDP relay on loopback),
 * with the default failure threshold and check timeout, polled and pushed: QUIC recovers (the
 * load balancer's acknowledgements wait, so lost answers and reports are repaired by its nudges
 * and the agent's echo), and the agent must never be marked DOWN. Its own file because each case
 * runs 60 checks (about 35 s). It runs in the serial
 * phase of `npm test` (.mocharc.serial.json), alone on the machine: it tests loss, and with a
 * 250 ms check timeout a parallel test file starving the load balancer, the agent or the relay
 * of CPU is a second fault it does not mean to test (the bench's starvation cell does).
 */
import { expect } from 'chai';
import { statusOf, startServer, startLoadBalancer, waitForState, waitUntil, stopAll } from '../helpers/procs.ts';
import { UdpRelay } from '../helpers/udp-relay.ts';
import { transitionsIn } from './honest.ts';

describe('Robustness: faults (loss)', function () {
  this.timeout(120_000);
  let relay: UdpRelay | undefined;

  afterEach(async () => {
    await relay?.close();
    relay = undefined;
    await stopAll();
  });


  for (const mode of ['poll', 'push'] as const) {
    it(`20% loss with the default thresholds, ${mode}: no false DOWN over 60 checks (QUIC recovers; lost answers and reports are nudged)`, async () => {
      const { port } = await startServer();
      relay = await UdpRelay.start({ port });
      // Default max-fail-attempts (3) and check timeout (half the interval); a short interval only.
      const lb = await startLoadBalancer([relay.address], { interval: 0.5, fail: 3, args: mode === 'push' ? ['--report-interval', '0.5'] : [] });
      await waitForState(lb.port, relay.address, 'UP');
      const c0 = (await statusOf(lb.port, relay.address)).checks;
      relay.set({ loss: 0.2 });
      await waitUntil(async () => (await statusOf(lb.port, relay!.address)).checks >= c0 + 60, 60_000, '60 checks under 20% loss', 500);
      const st = await statusOf(lb.port, relay.address);
      const down = transitionsIn(lb.proc.output).filter((t) => t.to === 'DOWN');
      // On failure, the status lines with failed checks say how the run went.
      const failing = lb.proc.output.split('\n').filter((l) => /failures=[1-9]/.test(l)).slice(-8).join('\n');
      expect(down, `false DOWN transitions (relay dropped ${relay.counters.up.dropped} up, ${relay.counters.down.dropped} down)\n${failing}`).to.deep.equal([]);
      expect(st.state).to.equal('UP');
      // The loss was real.
      expect(relay.counters.up.dropped + relay.counters.down.dropped).to.be.greaterThan(10);
    });
  }
});
