/**
 * `npm start` (`qhcp demo`): three servers and a load balancer on loopback, each a real child
 * process. The demo uses the fixed default ports 4242-4245, so it is skipped when any of them
 * is taken. A new user watches the three servers come UP and stops it all with Ctrl-C:
 * SIGINT to the demo alone, or to its whole process group as a terminal sends it.
 */
import { createSocket } from 'node:dgram';
import { readdirSync, readFileSync } from 'node:fs';
import { expect } from 'chai';
import { QhcpProcess, waitUntil, queryStatus, freePort } from '../helpers/procs.ts';
import { httpGet } from '../helpers/proxies.ts';

const PORTS: Array<[string, number]> = [
  ['0.0.0.0', 4242],
  ['127.0.0.1', 4243],
  ['127.0.0.1', 4244],
  ['127.0.0.1', 4245],
];

/** Whether a UDP port can be bound right now. */
async function udpFree(host: string, port: number): Promise<boolean> {
  const sock = createSocket('udp4');
  const ok = await new Promise<boolean>((resolve) => {
    sock.once('error', () => resolve(false));
    sock.bind(port, host, () => resolve(true));
  });
  await new Promise<void>((r) => {
    try {
      sock.close(() => r());
    } catch {
      r();
    }
  });
  return ok;
}

async function takenPorts(): Promise<number[]> {
  const taken: number[] = [];
  for (const [host, port] of PORTS) if (!(await udpFree(host, port))) taken.push(port);
  return taken;
}

/** PIDs whose parent is `pid` (Linux /proc). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      // Fields after the parenthesised command name: state, ppid, ...
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(d));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Starts the demo and waits until its status lines show the three servers UP. */
async function startDemo(detached: boolean, extra: string[] = []): Promise<{ demo: QhcpProcess; children: number[] }> {
  const demo = new QhcpProcess(['demo', '--check-interval', '1', ...extra], detached ? { detached: true } : {});
  const up = (p: number) => new RegExp(`server=127\\.0\\.0\\.1:${p} state=UP cpu=\\S+ mem=\\S+`);
  await waitUntil(() => [4243, 4244, 4245].every((p) => up(p).test(demo.stdout)), 60_000, `three servers UP in the demo output:\n${demo.output.slice(-1500)}`, 200);
  // The query port answers too, as the demo's banner says.
  const st = await queryStatus(4242);
  expect(st.map((s) => s.state)).to.deep.equal(['UP', 'UP', 'UP']);
  const children = childrenOf(demo.pid);
  return { demo, children };
}

async function expectAllGone(demo: QhcpProcess, children: number[]): Promise<void> {
  const exit = await Promise.race([demo.exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 30_000))]);
  expect(exit, `demo exit; output:\n${demo.output.slice(-1500)}`).to.deep.equal({ code: 0, signal: null });
  await waitUntil(() => children.every((c) => !alive(c)), 15_000, `children ${children.join(',')} to exit`);
  await waitUntil(async () => (await takenPorts()).length === 0, 15_000, 'ports 4242-4245 to be free again');
}

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
