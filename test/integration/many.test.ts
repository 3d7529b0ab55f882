/**
 * One agent serves any number of load balancers at once: ten `qhcp loadbalancer` processes
 * check the same `qhcp server`, and every one of them sees it UP with metrics.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { startServer, startLoadBalancer, waitForState, queryStatus, stopAll } from '../helpers/procs.ts';

const LOAD_BALANCERS = 10;

describe('ten load balancers against one server', function () {
  this.timeout(120_000);
  let cwd: string;

  before(() => {
    cwd = mkdtempSync(join(tmpdir(), 'qhcp-many-'));
  });
  after(async () => {
    await stopAll();
    if (cwd) rmSync(cwd, { recursive: true, force: true });
  });

  it('all ten see the server UP with metrics, at the same time', async () => {
    const server = await startServer({ cwd });
    // Two cores: start them two at a time, so start-up does not starve the checks already running.
    const lbs: Array<{ port: number }> = [];
    for (let i = 0; i < LOAD_BALANCERS; i += 2) {
      lbs.push(...(await Promise.all([0, 1].map(() => startLoadBalancer([server.address], { cwd, interval: 1, fail: 3, reconnect: 1 })))));
    }
    for (const lb of lbs) await waitForState(lb.port, server.address, 'UP', 60_000);
    // All at once: one more round of STATUS, every load balancer still UP and checking.
    const views = await Promise.all(lbs.map((lb) => queryStatus(lb.port)));
    for (const [i, v] of views.entries()) {
      expect(v, `load balancer ${i}`).to.have.length(1);
      expect(v[0]!.state, `load balancer ${i}: ${v[0]!.lastError}`).to.equal('UP');
      expect(v[0]!.metrics).to.include.keys('cpu', 'memory', 'load1');
      expect(v[0]!.checks).to.be.at.least(1);
    }
    expect(server.proc.running).to.equal(true);
    expect(server.proc.output).not.to.match(/refused|too many/);
  });
});
