/**
 * A real Debian `redis-server` for the load balancer group tests: started as our child on a
 * free loopback TCP port with no persistence, stopped by PID. Every wait is bounded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { waitUntil } from './procs.ts';
import { which } from './proxies.ts';

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freeTcpPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = srv.address() as { port: number };
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

export class RedisServer {
  child: ChildProcess | undefined;
  output = '';

  constructor(readonly port: number) {}

  static available(): boolean {
    return which('redis-server') !== undefined;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Starts it (again, on the same port) and waits until it accepts connections (15 s at most). */
  async start(): Promise<void> {
    this.output = '';
    const child = spawn(which('redis-server')!, ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'yes', '--loglevel', 'notice'], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (this.output = (this.output + d).slice(-20_000)));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.output = (this.output + d).slice(-20_000)));
    await waitUntil(
      () => {
        if (child.exitCode !== null) throw Object.assign(new Error(`redis-server exited: ${this.output}`), { fatal: true });
        return /Ready to accept connections/.test(this.output);
      },
      15_000,
      'redis-server to accept connections',
      50,
    );
  }

  /** Stops it by PID (SIGKILL: an outage, not a clean shutdown) and waits until it is gone. */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    const gone = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGKILL');
    await gone;
  }
}
