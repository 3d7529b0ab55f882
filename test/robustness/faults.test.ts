/**
 * Faults between a real load balancer and real agents, with a UDP relay on loopback in the
 * path (test/helpers/udp-relay.ts): a cut and healed path, a slow path, and processes that are
 * killed, stopped, restarted (loss is in faults-loss.test.ts). The load balancer must report
 * what really happened: DOWN after the configured failures when the path is gone, UP again
 * without a restart when it heals, and never a hung checker.
 */
import { expect } from 'chai';
import { statusOf, startServer, startLoadBalancer, waitForState, waitUntil, stopAll, sleep, type QhcpProcess } from '../helpers/procs.ts';
import { UdpRelay } from '../helpers/udp-relay.ts';
import { transitionsIn } from './honest.ts';

describe('Robustness: faults', function () {
  this.timeout(90_000);
  let relay: UdpRelay | undefined;

  afterEach(async () => {
    await relay?.close();
    relay = undefined;
    await stopAll();
  });


  it('duplicated, reordered and jittered datagrams: the server stays UP, no false DOWN', async () => {
    const { port } = await startServer();
    relay = await UdpRelay.start({ port });
    const lb = await startLoadBalancer([relay.address], { interval: 0.3, fail: 3, args: ['--check-timeout', '0.25'] });
    await waitForState(lb.port, relay.address, 'UP');
    const c0 = (await statusOf(lb.port, relay.address)).checks;
    relay.set({ duplicate: 0.3, reorder: 0.3, delayMs: 2, jitterMs: 8 });
    await waitUntil(async () => (await statusOf(lb.port, relay!.address)).checks >= c0 + 20, 30_000, '20 checks through a duplicating, reordering path', 300);
    const st = await statusOf(lb.port, relay.address);
    expect(relay.counters.up.duplicated + relay.counters.down.duplicated, 'datagrams duplicated').to.be.greaterThan(5);
    expect(relay.counters.up.reordered + relay.counters.down.reordered, 'datagrams reordered').to.be.greaterThan(5);
    expect(st.state).to.equal('UP');
    expect(transitionsIn(lb.proc.output).filter((t) => t.to !== 'UP')).to.deep.equal([]);
  });

  it('a cut path: DOWN after the configured failures; healed: UP again within the reconnect interval, nothing restarted', async () => {
    const { proc: server, port } = await startServer();
    relay = await UdpRelay.start({ port });
    const lb = await startLoadBalancer([relay.address], { interval: 0.3, fail: 4, reconnect: 1, args: ['--check-timeout', '0.25'] });
    await waitForState(lb.port, relay.address, 'UP');
    const pids = [server.pid, lb.proc.pid];
    relay.set({ cut: true });
    await waitForState(lb.port, relay.address, 'DOWN', 20_000);
    // Exactly 4 failures moved it, as the transition recorded them: status read after the
    // transition may already count a fifth (checks go on every 0.3 s while it is DOWN).
    const t = transitionsIn(lb.proc.output).find((x) => x.to === 'DOWN')!;
    expect(t.reason).to.match(/^4 consecutive failed checks;/);
    // Stays DOWN while cut: further checks (reconnects) keep failing.
    await sleep(1500);
    expect((await statusOf(lb.port, relay.address)).state).to.equal('DOWN');
    const checksAtHeal = (await statusOf(lb.port, relay.address)).checks;
    relay.heal();
    const up = await waitForState(lb.port, relay.address, 'UP', 20_000);
    // UP at the next reconnect attempt (one more if an attempt was half-way when the path healed).
    expect(up.checks - checksAtHeal).to.be.within(1, 2);
    expect([server.pid, lb.proc.pid]).to.deep.equal(pids);
    expect(server.running && lb.proc.running).to.equal(true);
  });

  it('a server slower than the check timeout: failed checks and DOWN, never a hung checker', async () => {
    const { port } = await startServer();
    const { address: fastAddr } = await startServer();
    relay = await UdpRelay.start({ port });
    const lb = await startLoadBalancer([relay.address, fastAddr], { interval: 0.5, fail: 3, reconnect: 1, args: ['--check-timeout', '0.3'] });
    await waitForState(lb.port, relay.address, 'UP');
    await waitForState(lb.port, fastAddr, 'UP');
    relay.set({ delayMs: 250 }); // 500 ms round trip > 300 ms timeout
    const down = await waitForState(lb.port, relay.address, 'DOWN', 20_000);
    expect(down.lastError).to.match(/RESPONSE_TIMEOUT|timed out/);
    // The checker is not hung: the other server is still checked, and STATUS is answered.
    const fast = await statusOf(lb.port, fastAddr);
    await waitUntil(async () => (await statusOf(lb.port, fastAddr)).checks >= fast.checks + 3, 15_000, 'checks of the fast server go on');
    expect((await statusOf(lb.port, fastAddr)).state).to.equal('UP');
    relay.heal();
    await waitForState(lb.port, relay.address, 'UP', 20_000);
  });

  it('a server killed (-9) goes DOWN; restarted on the same port with a new certificate, UP again', async () => {
    const first = await startServer();
    const lb = await startLoadBalancer([first.address], { interval: 0.3, fail: 3, reconnect: 0.5, args: ['--check-timeout', '0.25'] });
    await waitForState(lb.port, first.address, 'UP');
    first.proc.signal('SIGKILL');
    await first.proc.exited;
    await waitForState(lb.port, first.address, 'DOWN', 20_000);
    // A new process, new in-memory self-signed certificate, same port.
    const second = await startServer({ port: first.port });
    expect(second.proc.output).to.match(/self-signed certificate/);
    await waitForState(lb.port, first.address, 'UP', 20_000);
    expect(lb.proc.running).to.equal(true);
    const seen = transitionsIn(lb.proc.output).filter((t) => t.server === first.address).map((t) => `${t.from}->${t.to}`);
    expect(seen).to.deep.equal(['UNKNOWN->UP', 'UP->DOWN', 'DOWN->UP']);
  });

  it('a server stopped (SIGSTOP) goes DOWN without hanging the checker; continued (SIGCONT), UP again', async () => {
    const s = await startServer();
    const other = await startServer();
    const lb = await startLoadBalancer([s.address, other.address], { interval: 0.3, fail: 3, reconnect: 0.5, args: ['--check-timeout', '0.25'] });
    await waitForState(lb.port, s.address, 'UP');
    await waitForState(lb.port, other.address, 'UP');
    let stopped: QhcpProcess | undefined = s.proc;
    try {
      s.proc.signal('SIGSTOP');
      await waitForState(lb.port, s.address, 'DOWN', 20_000);
      expect((await statusOf(lb.port, other.address)).state).to.equal('UP');
      s.proc.signal('SIGCONT');
      stopped = undefined;
      await waitForState(lb.port, s.address, 'UP', 20_000);
    } finally {
      stopped?.signal('SIGCONT');
    }
    expect(s.proc.running).to.equal(true);
  });

  it('the load balancer killed and restarted: fresh checks rebuild its state; the agent drops the old connection by idle timeout', async () => {
    const s = await startServer({ args: ['--idle-timeout', '1', '--log-level', 'debug'] });
    const first = await startLoadBalancer([s.address], { interval: 0.3, fail: 3, args: ['--check-timeout', '0.25'] });
    await waitForState(first.port, s.address, 'UP');
    await waitUntil(() => /load balancer connected/.test(s.proc.output), 10_000, 'the agent to see the first load balancer');
    first.proc.signal('SIGKILL');
    await first.proc.exited;
    // The agent holds the dead load balancer's connection only until the idle timeout.
    await s.proc.waitFor(/session closed .*by=idle/, 15_000);
    const second = await startLoadBalancer([s.address], { port: first.port, interval: 0.3, fail: 3, args: ['--check-timeout', '0.25'] });
    const st = await waitForState(second.port, s.address, 'UP', 20_000);
    // State came from fresh checks, not from the old process.
    expect(st.checks).to.be.below(50);
    expect(transitionsIn(second.proc.output).map((t) => `${t.from}->${t.to}`)).to.deep.equal(['UNKNOWN->UP']);
    expect(s.proc.running).to.equal(true);
    expect((s.proc.output.match(/load balancer connected/g) ?? []).length).to.be.at.least(2);
  });
});
