/**
 * Connection slots cannot be held by idleness (issue 13, item 8): sessions that complete HELLO
 * and then only keep the connection alive are closed after `sessionIdleTimeout` with ERROR 303
 * SESSION_IDLE, and one source address holds at most `maxConnectionsPerSource` connections. The
 * attack comes from 127.0.0.2; the real load balancers run from 127.0.0.1 and must stay served.
 */
import { expect } from 'chai';
import { codeName } from '../../core/protocol/session.ts';
import { startServer, startLoadBalancer, waitForState, stopAll, sleep, waitUntil, statusOf } from '../helpers/procs.ts';
import { RawPeer, HELLO_CHECKER } from '../helpers/rawpeer.ts';
import { transitionsIn } from './honest.ts';

describe('Robustness: idle sessions and per-source caps', function () {
  this.timeout(120_000);
  const peers: RawPeer[] = [];

  afterEach(async () => {
    await Promise.all(peers.splice(0).map((p) => p.close()));
    await stopAll();
  });

  /** One attacker session: HELLO, then only QUIC keep-alives. Resolves with how it ended. */
  async function idler(port: number, from: string): Promise<RawPeer | undefined> {
    const p = await RawPeer.open({ port, localHost: from, keepAliveMs: 300, timeoutMs: 3000 }).catch(() => undefined);
    if (!p) return undefined;
    peers.push(p);
    await p.send(HELLO_CHECKER());
    return p;
  }

  it('HELLO-then-idle sessions from one address cannot lock out the real load balancer, which stays UP throughout', async () => {
    const { proc, port, address } = await startServer({ args: ['--max-connections', '12', '--max-connections-per-source', '6', '--session-idle-timeout', '2'] });
    const lb = await startLoadBalancer([address], { interval: 1, args: ['--check-timeout', '0.9'] });
    await waitForState(lb.port, address, 'UP');
    const upAt = lb.proc.output.length;

    // Wave after wave of idlers from 127.0.0.2 for ~8 s: far more than max-connections.
    const ends = new Map<string, number>();
    const attackEnd = Date.now() + 8000;
    const attack = (async () => {
      while (Date.now() < attackEnd) {
        await Promise.all(Array.from({ length: 10 }, () => idler(port, '127.0.0.2')));
        await sleep(300);
      }
    })();

    // A second, new load balancer started in the middle of the attack gets in and sees the agent UP.
    await sleep(2500);
    const lb2 = await startLoadBalancer([address], { interval: 1, args: ['--check-timeout', '0.9'] });
    await waitForState(lb2.port, address, 'UP', 15_000);
    await attack;

    await waitUntil(() => peers.every((p) => p.isClosed), 15_000, 'every idler closed');
    for (const p of peers) {
      const name = codeName((await p.closedWith()).code);
      ends.set(name, (ends.get(name) ?? 0) + 1);
    }
    const got = Object.fromEntries(ends);
    const admitted = peers.filter((p) => p.received.some((m) => m.type === 'ACK')).length;
    // Refused beyond the per-source cap at once; the admitted ones closed by the idle limit.
    expect(Object.keys(got).sort()).to.deep.equal(['SESSION_IDLE', 'TOO_MANY_CONNECTIONS']);
    expect(got.SESSION_IDLE, 'idlers closed by the idle limit').to.equal(admitted);
    expect(admitted).to.be.greaterThan(0);
    for (const p of peers.filter((x) => x.error?.code === 303)) expect(p.error!.reason).to.match(/nothing asked for \d+ s/);
    expect(proc.output).to.match(/too many connections from 127\.0\.0\.2/);

    // The real load balancer kept its session: UP throughout.
    expect(transitionsIn(lb.proc.output.slice(upAt)).filter((t) => t.server === address)).to.deep.equal([]);
    expect((await statusOf(lb.port, address)).state).to.equal('UP');
    expect(proc.running).to.equal(true);
  });

  it('a push-mode session is not idle: reports at least as often as the idle limit keep it', async () => {
    const { proc, port, address } = await startServer({ args: ['--session-idle-timeout', '1.5'] });
    const lb = await startLoadBalancer([address], { interval: 1, args: ['--check-timeout', '0.9', '--report-interval', '0.5'] });
    await waitForState(lb.port, address, 'UP');
    const upAt = lb.proc.output.length;
    const c0 = (await statusOf(lb.port, address)).checks;
    await sleep(4000);
    const st = await statusOf(lb.port, address);
    expect(st.state).to.equal('UP');
    expect(st.checks).to.be.greaterThan(c0 + 3);
    expect(proc.output).to.not.match(/idle session closed/);
    expect(transitionsIn(lb.proc.output.slice(upAt)).filter((t) => t.server === address)).to.deep.equal([]);
    void port;
  });
});
