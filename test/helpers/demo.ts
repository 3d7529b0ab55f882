/**
 * The demo (`npm start`, `qhcp demo`) under test: it uses the fixed default ports 4242-4245, so
 * callers skip when any is taken; started and watched until its three servers are UP, stopped
 * by PID, its children found through /proc (Linux).
 */
import { createSocket } from 'node:dgram';
import { expect } from 'chai';
import { QhcpProcess, waitUntil, queryStatus, childrenOf } from './procs.ts';

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

export async function takenPorts(): Promise<number[]> {
  const taken: number[] = [];
  for (const [host, port] of PORTS) if (!(await udpFree(host, port))) taken.push(port);
  return taken;
}


export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Starts the demo and waits until its status lines show the three servers UP. */
export async function startDemo(detached: boolean, extra: string[] = [], opts: { bin?: string; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<{ demo: QhcpProcess; children: number[] }> {
  const demo = new QhcpProcess(['demo', '--check-interval', '1', ...extra], { ...opts, ...(detached ? { detached: true } : {}) });
  const up = (p: number) => new RegExp(`server=127\\.0\\.0\\.1:${p} state=UP cpu=\\S+ mem=\\S+`);
  try {
    await waitUntil(
      () => {
        if (!demo.running) throw Object.assign(new Error(`the demo exited:\n${demo.output.slice(-1500)}`), { fatal: true });
        return [4243, 4244, 4245].every((p) => up(p).test(demo.stdout));
      },
      60_000,
      'three servers UP in the demo output',
      200,
    );
    // The query port answers too, as the demo's banner says.
    const st = await queryStatus(4242);
    expect(st.map((s) => s.state)).to.deep.equal(['UP', 'UP', 'UP']);
  } catch (e) {
    // Nothing is left behind holding the demo's ports: its children, then the demo, by PID.
    const children = childrenOf(demo.pid);
    for (const c of children) if (alive(c)) process.kill(c, 'SIGKILL');
    await demo.stop(3000);
    throw new Error(`${(e as Error).message}\ndemo output:\n${demo.output.slice(-2000)}`);
  }
  const children = childrenOf(demo.pid);
  return { demo, children };
}

export async function expectAllGone(demo: QhcpProcess, children: number[]): Promise<void> {
  const exit = await Promise.race([demo.exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 30_000))]);
  expect(exit, `demo exit; output:\n${demo.output.slice(-1500)}`).to.deep.equal({ code: 0, signal: null });
  await waitUntil(() => children.every((c) => !alive(c)), 15_000, `children ${children.join(',')} to exit`);
  await waitUntil(async () => (await takenPorts()).length === 0, 15_000, 'ports 4242-4245 to be free again');
}

