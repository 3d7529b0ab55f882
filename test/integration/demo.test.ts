/**
 * `npm start` (`qhcp demo`): three servers and a load balancer on loopback, each a real child
 * process. The demo uses the fixed default ports 4242-4245, so it is skipped when any of them
 * is taken. A new user watches the three servers come UP and stops it all with Ctrl-C:
 * SIGINT to the demo alone, or to its whole process group as a terminal sends it.
 */
import { expect } from 'chai';
import { freePort, type QhcpProcess } from '../helpers/procs.ts';
import { alive, expectAllGone, startDemo, takenPorts } from '../helpers/demo.ts';
import { httpGet } from '../helpers/proxies.ts';

describe('npm start: the local demonstration', function () {
  this.timeout(120_000);
  let running: QhcpProcess | undefined;
  let spawned: number[] = [];

  beforeEach(async function () {
    const taken = await takenPorts();
    if (taken.length > 0) {
      console.log(`      skipped: the demo needs UDP ports 4242-4245 and ${taken.join(', ')} ${taken.length > 1 ? 'are' : 'is'} in use`);
      this.skip();
    }
  });
  afterEach(async () => {
    // Only if a test failed half-way: stop the demo, then any child it left, by PID.
    if (running?.running) await running.stop(8000);
    for (const c of spawned) if (alive(c)) process.kill(c, 'SIGKILL');
    running = undefined;
    spawned = [];
  });

  it('shows three servers UP; SIGINT to the demo stops it and its children, exit 0', async () => {
    const { demo, children } = await startDemo(false);
    running = demo;
    spawned = children;
    // Three servers and a load balancer (tsx may add a helper process of its own).
    expect(children.length).to.be.at.least(4);
    expect(demo.stdout).to.match(/demo running/);
    expect(demo.stdout).to.match(/open http:\/\/127\.0\.0\.1:4280\/ for the live status page/);
    demo.signal('SIGINT');
    await expectAllGone(demo, children);
  });

  it('Ctrl-C (SIGINT to the whole process group) stops everything, exit 0', async () => {
    const { demo, children } = await startDemo(true);
    running = demo;
    spawned = children;
    // What a terminal does on Ctrl-C: the signal goes to every process of the foreground group.
    process.kill(-demo.pid, 'SIGINT');
    await expectAllGone(demo, children);
  });

  it('--tcp-proxy: requests through the proxy reach the three services in turn', async () => {
    const port = await freePort();
    const { demo, children } = await startDemo(false, ['--tcp-proxy', String(port)]);
    running = demo;
    spawned = children;
    expect(demo.stdout).to.include(`curl -s 127.0.0.1:${port}`);
    const bodies: string[] = [];
    for (let i = 0; i < 6; i++) bodies.push((await httpGet(port)).trim());
    // Round-robin over three UP backends: each service once in every three requests.
    expect(new Set(bodies.slice(0, 3))).to.deep.equal(new Set(['service 1', 'service 2', 'service 3']));
    expect(bodies.slice(3)).to.deep.equal(bodies.slice(0, 3));
    demo.signal('SIGINT');
    await expectAllGone(demo, children);
  });
});
