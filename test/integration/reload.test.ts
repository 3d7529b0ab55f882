/**
 * SIGHUP reloads the load balancer's config file, with a real `qhcp loadbalancer` process and
 * scripted agents on loopback: servers added and removed without touching the others' state,
 * weights and reloadable options applied, the rest reported as needing a restart, one summary
 * line; a config that does not load or validate leaves the running one in place.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { QhcpProcess, freePort, queryStatus, statusOf, waitForState, waitUntil, stopAll } from '../helpers/procs.ts';
import { ScriptedAgent } from '../helpers/scripted-agent.ts';

describe('load balancer SIGHUP: reload the config file (real process)', function () {
  this.timeout(120_000);
  let cwd: string;
  const agents: ScriptedAgent[] = [];

  before(() => {
    cwd = mkdtempSync(join(tmpdir(), 'qhcp-reload-'));
  });
  after(async () => {
    await stopAll();
    await Promise.all(agents.map((x) => x.stop()));
    rmSync(cwd, { recursive: true, force: true });
  });

  it('adds and removes servers without touching the others, applies what it can, keeps the running config when the new one is invalid', async () => {
    for (let i = 0; i < 3; i++) agents.push(await ScriptedAgent.start());
    const [a, b, c] = agents as [ScriptedAgent, ScriptedAgent, ScriptedAgent];
    const file = join(cwd, 'qhcp.config.ts');
    const write = (text: string) => writeFileSync(file, text);
    write(`export default { servers: ['${a.address}', '${b.address}'], checkInterval: 0.5, maxFailAttempts: 3 };\n`);
    const port = await freePort();
    const lb = new QhcpProcess(['loadbalancer', '--loadbalancer-host', '127.0.0.1', '--loadbalancer-port', String(port), '--status', 'lines'], { cwd });
    await lb.waitFor(/load balancer started/);
    const upA = await waitForState(port, a.address, 'UP');
    await waitForState(port, b.address, 'UP');

    // A valid change: B out, C in, A's weight, two reloadable options, one that needs a restart.
    write(`export default { servers: [{ address: '${a.address}', weight: 2 }, '${c.address}'], checkInterval: 0.4, maxFailAttempts: 3, degraded: 'always', maxStreams: 3 };\n`);
    let mark = lb.output.length;
    lb.signal('SIGHUP');
    const [line] = await lb.waitFor(/config reloaded: .*/, 15_000, mark);
    expect(line).to.contain(`+1 server (${c.address}), -1 server (${b.address}), 1 weight changed (${a.address})`);
    expect(line).to.match(/applied: checkInterval, degraded; needs a restart \(not applied\): maxStreams/);
    await waitForState(port, c.address, 'UP');
    const st = await queryStatus(port);
    expect(st.map((s) => s.address)).to.deep.equal([a.address, c.address]);
    const nowA = st[0]!;
    expect(nowA.state).to.equal('UP');
    expect(nowA.since, "A's state was not touched").to.equal(upA.since);
    // A's checks go on across the reload (polled: under CPU starvation one interval can be long).
    await waitUntil(async () => (await statusOf(port, a.address)).checks > upA.checks, 15_000, "A's checks to go on after the reload");
    expect(nowA.weight).to.equal(2);
    expect(b.terminated, 'the removed server got TERMINATE').to.equal(1);
    expect(lb.output).not.to.match(new RegExp(`"server":"${a.address.replace(/\./g, '\\.')}","from":"UP"`));

    // Invalid: the running config stays, with one error line.
    write(`export default { servers: ['${a.address}'], checkInterval: 'fast' };\n`);
    mark = lb.output.length;
    lb.signal('SIGHUP');
    const [bad] = await lb.waitFor(/config reload failed.*/, 15_000, mark);
    expect(bad).to.match(/the running configuration stays: checkInterval: must be number/);
    // A server list that does not parse: the same, nothing applied.
    write(`export default { servers: ['${a.address}', 'bad host:1'] };\n`);
    mark = lb.output.length;
    lb.signal('SIGHUP');
    const [bad2] = await lb.waitFor(/config reload failed.*/, 15_000, mark);
    expect(bad2).to.match(/bad address "bad host:1"/);
    // A file that does not even load.
    write(`export default { servers: [ ;\n`);
    mark = lb.output.length;
    lb.signal('SIGHUP');
    await lb.waitFor(/config reload failed, the running configuration stays: cannot load/, 15_000, mark);
    expect(lb.running).to.equal(true);
    expect((await queryStatus(port)).map((s) => s.address)).to.deep.equal([a.address, c.address]);
    expect((await statusOf(port, c.address)).state).to.equal('UP');
    // Same file again: no change.
    write(`export default { servers: [{ address: '${a.address}', weight: 2 }, '${c.address}'], checkInterval: 0.4, maxFailAttempts: 3, degraded: 'always', maxStreams: 3 };\n`);
    mark = lb.output.length;
    lb.signal('SIGHUP');
    const [same] = await lb.waitFor(/config reloaded: .*/, 15_000, mark);
    expect(same).to.match(/config reloaded: needs a restart \(not applied\): maxStreams/);
    await waitUntil(() => lb.running, 1000, 'still running');
    await lb.stop();
    expect((await lb.exited).code).to.equal(0);
  });
});

describe('load balancer SIGTERM with a check in flight (real process)', function () {
  this.timeout(60_000);
  after(async () => {
    await stopAll();
  });

  it('waits for the answer, then sends TERMINATE (as docs/operations.md promises), and exits 0', async () => {
    const agent = await ScriptedAgent.start();
    try {
      const port = await freePort();
      const lb = new QhcpProcess(['loadbalancer', '--servers', agent.address, '--loadbalancer-host', '127.0.0.1', '--loadbalancer-port', String(port), '--check-interval', '1', '--status', 'none']);
      await lb.waitFor(/load balancer started/);
      await waitForState(port, agent.address, 'UP');
      // The next HEALTH_REQUEST is answered 400 ms late; SIGTERM goes to the load balancer the
      // moment that request arrives, so the check is in flight when it starts stopping.
      const inFlight = new Promise<void>((resolve) => {
        agent.onRequest = () => {
          agent.onRequest = undefined;
          agent.answerDelayMs = 400;
          lb.signal('SIGTERM');
          resolve();
        };
      });
      await inFlight;
      const { code } = await lb.exited;
      expect(code).to.equal(0);
      expect(agent.terminated, 'TERMINATE received').to.equal(1);
      const tail = agent.log.slice(agent.log.lastIndexOf('HEALTH_REQUEST'));
      expect(tail).to.deep.equal(['HEALTH_REQUEST', 'sent HEALTH_RESPONSE', 'TERMINATE']);
    } finally {
      await agent.stop();
    }
  });
});
