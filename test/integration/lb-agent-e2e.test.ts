/**
 * Issue 11, the load balancer's side, end to end with real processes on loopback: a `qhcp server`
 * fronting two services (web, api), each checked by the built-in `exec` check whose exit code
 * and output the test sets (0 passing, 1 warning, 2 critical); a second plain `qhcp server`; a
 * `qhcp loadbalancer` with backends `agent/web`, `agent/api` and the plain one, checking every
 * 30 s, so what it learns in between it learns from pushed reports. `qhcp drain` / `qhcp ready`
 * go through the agent's control socket.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { pickMany, startServer, startLoadBalancer, runQhcp, stopAll, waitForState, statusOf, type QhcpProcess } from '../helpers/procs.ts';

const picks = pickMany;

describe('issue 11 at the load balancer: agent verdicts, services, drain (real processes)', function () {
  this.timeout(240_000);
  let dir: string;
  let agent: { proc: QhcpProcess; address: string };
  let plain: { proc: QhcpProcess; address: string };
  let lb: { proc: QhcpProcess; port: number };
  let web: string;
  let api: string;
  /** The next run of service `name`'s check exits `code` and prints `output`. */
  const setCheck = (name: string, code: number, output: string) => {
    writeFileSync(join(dir, `${name}.out`), `${output}\n`);
    writeFileSync(join(dir, `${name}.code`), `${code}\n`);
  };
  const ctl = (...args: string[]) => runQhcp([...args, '--socket', join(dir, 'ctl.sock')], { cwd: dir, timeoutMs: 30_000 });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-lb-e2e-'));
    setCheck('web', 0, 'web ok');
    setCheck('api', 0, 'api ok');
    const check = (name: string) => ({
      type: 'exec',
      shell: true,
      command: `cat '${join(dir, `${name}.out`)}'; exit $(cat '${join(dir, `${name}.code`)}')`,
      interval: 0.2,
      timeout: 2,
      rise: 1,
      fall: 1,
    });
    writeFileSync(join(dir, 'agent.json'), JSON.stringify({ services: { web: [check('web')], api: [check('api')] }, controlSocket: './ctl.sock' }));
    agent = await startServer({ cwd: dir, args: ['-config', join(dir, 'agent.json'), '-sample-interval', '0.5'] });
    plain = await startServer({ cwd: dir });
    web = `${agent.address}/web`;
    api = `${agent.address}/api`;
    lb = await startLoadBalancer([web, api, plain.address], { cwd: dir, interval: 30, fail: 3 });
    for (const b of [web, api, plain.address]) await waitForState(lb.port, b, 'UP', 60_000);
  });

  after(async () => {
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  });

  it('two services on one agent with different verdicts: NOT_SERVING is DOWN at once with the reason, the other stays UP; then they swap', async () => {
    const checks = (await statusOf(lb.port, api)).checks;
    setCheck('api', 2, 'connection refused on :8080');
    const down = await waitForState(lb.port, api, 'DOWN', 20_000);
    expect(down).to.include({ service: 'api', verdict: 'NOT_SERVING', failures: 0 });
    expect(down.reason).to.match(/^not serving: .*connection refused on :8080/);
    expect(down.checks, 'no check ran: the agent pushed it').to.equal(checks);
    expect((await statusOf(lb.port, web)).state).to.equal('UP');
    expect((await picks(lb.port, 4, 'web')).map((p) => p.server)).to.deep.equal([web, web, web, web]);
    expect((await picks(lb.port, 1, 'api'))[0]).to.deep.equal({ server: null, reason: 'no server of service "api" is UP' });
    expect((await picks(lb.port, 8)).map((p) => p.server)).to.not.include(api);

    setCheck('web', 2, 'HTTP 503');
    setCheck('api', 0, 'api ok');
    await waitForState(lb.port, web, 'DOWN', 20_000);
    await waitForState(lb.port, api, 'UP', 20_000);
    expect((await statusOf(lb.port, web)).reason).to.match(/HTTP 503/);
    setCheck('web', 0, 'web ok');
    await waitForState(lb.port, web, 'UP', 20_000);
  });

  it('DEGRADED (a warning): its own state, picked for its service only when no UP one is left, shown with the reason', async () => {
    setCheck('web', 1, 'slow: p99 900 ms');
    const st = await waitForState(lb.port, web, 'DEGRADED', 20_000);
    expect(st.verdict).to.equal('DEGRADED');
    expect(st.reason).to.match(/^degraded: .*slow: p99 900 ms/);
    // Among all backends, UP ones are there: the DEGRADED one is not picked.
    expect((await picks(lb.port, 8)).map((p) => p.server)).to.not.include(web);
    // For service web it is the only one: picked, and the answer says why.
    const [p] = await picks(lb.port, 1, 'web');
    expect(p).to.include({ server: web });
    expect(p!.why).to.match(/of 1 DEGRADED \(none UP\)$/);
    // The status table shows it.
    const s = await runQhcp(['status', '--address', `127.0.0.1:${lb.port}`, '--service', 'web']);
    expect(s.stdout).to.match(/\/web\s+DEGRADED\s+DEGRADED\s+READY\s.*degraded: .*slow: p99 900 ms/);
    setCheck('web', 0, 'web ok');
    await waitForState(lb.port, web, 'UP', 20_000);
  });

  it('qhcp drain: every backend of that agent DRAINING, no PICK returns them, the connection stays; qhcp ready: UP', async () => {
    const d = await ctl('drain', '--reason', 'deploy 7');
    expect(d.code, d.stderr).to.equal(0);
    for (const b of [web, api]) {
      const st = await waitForState(lb.port, b, 'DRAINING', 15_000);
      expect(st).to.include({ agentAdmin: 'DRAIN', adminState: 'READY' });
      expect(st.reason).to.equal('draining');
    }
    const got = (await picks(lb.port, 12)).map((p) => p.server);
    expect(got).to.deep.equal(Array(12).fill(plain.address));
    expect((await picks(lb.port, 1, 'web'))[0]!.server).to.equal(null);
    const r = await ctl('ready');
    expect(r.code, r.stderr).to.equal(0);
    for (const b of [web, api]) await waitForState(lb.port, b, 'UP', 15_000);
    expect((await picks(lb.port, 6)).map((p) => p.server)).to.include.members([web, api]);
    expect(lb.proc.running && agent.proc.running).to.equal(true);
  });
});
