/**
 * Test helpers: start real `qhcp` processes on loopback, read their output, query them, and
 * stop exactly the processes we started (by PID). Every wait is bounded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { QueryClient } from '../../core/client/query.ts';
import type { ServerStatus } from '../../core/protocol/messages.ts';

export const BIN = fileURLToPath(new URL('../../bin/qhcp.js', import.meta.url));
export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

const started = new Set<QhcpProcess>();

/** A UDP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  const sock = createSocket('udp4');
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => resolve());
  });
  const { port } = sock.address();
  await new Promise<void>((r) => sock.close(() => r()));
  return port;
}

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes (then throws with `what`). */
export async function waitUntil<T>(fn: () => T | undefined | null | false | Promise<T | undefined | null | false>, timeoutMs: number, what: string, everyMs = 100): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      if ((e as { fatal?: boolean }).fatal) throw e;
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${String(last)})` : ''}`);
    await sleep(everyMs);
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** PIDs whose parent is `pid` (Linux /proc). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      // pid (comm) state ppid ...; comm may hold spaces: read after the last ')'.
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(d));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

/** The `qhcp` processes (bin/qhcp.js on their command line) whose parent is `pid`: a relaunched load balancer. */
export function qhcpChildren(pid: number): number[] {
  return childrenOf(pid).filter((c) => {
    try {
      return readFileSync(`/proc/${c}/cmdline`, 'utf8').split('\0').includes(BIN);
    } catch {
      return false;
    }
  });
}

/** One `qhcp` child process with its output captured. */
export class QhcpProcess {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  /** `detached`: its own process group (pgid = pid), to signal it and its children as a terminal does. */
  /** `bin`: an installed `qhcp` executable to run instead of this checkout's bin/qhcp.js. */
  constructor(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; detached?: boolean; bin?: string } = {}) {
    this.child = spawn(opts.bin ?? process.execPath, opts.bin ? args : [BIN, ...args], {
      cwd: opts.cwd ?? ROOT,
      env: { ...process.env, QHCP_LOG_FORMAT: 'text', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: opts.detached ?? false,
    });
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => (this.stdout += d));
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
    started.add(this);
    void this.exited.then(() => started.delete(this));
  }

  get pid(): number {
    return this.child.pid!;
  }
  get output(): string {
    return this.stdout + this.stderr;
  }
  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Waits for `re` in stdout+stderr (text after `from` only, when given); 45 s by default (start-up on a loaded 2-core machine). */
  async waitFor(re: RegExp, timeoutMs = 45_000, from = 0): Promise<RegExpMatchArray> {
    return waitUntil(
      () => {
        // Fatal: waiting longer cannot help once the process is gone.
        if (!this.running && !re.test(this.output.slice(from))) throw Object.assign(new Error(`process exited: ${this.output.slice(-2000)}`), { fatal: true });
        return this.output.slice(from).match(re) ?? undefined;
      },
      timeoutMs,
      `${re} in output of qhcp (pid ${this.pid}):\n${this.output.slice(-1500)}`,
    );
  }

  signal(sig: NodeJS.Signals): void {
    if (!this.running) return;
    // SIGSTOP and SIGKILL cannot be caught, so the first process of a relaunched load balancer
    // cannot pass them on (core/cli/relaunch.ts; killed, it makes the load balancer stop as on
    // SIGTERM, a clean close): freeze or kill the load balancer itself too, as `kill -STOP` or
    // `kill -9` on its pid does. A test's kill -9 is a crash of the load balancer.
    if (sig === 'SIGSTOP' || sig === 'SIGKILL') for (const pid of qhcpChildren(this.pid)) process.kill(pid, sig);
    process.kill(this.pid, sig);
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
  async stop(graceMs = 5000): Promise<void> {
    if (!this.running) return;
    this.signal('SIGCONT');
    this.signal('SIGTERM');
    const t = setTimeout(() => this.signal('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
  }
}

/** Runs `qhcp args` to completion (bounded) and returns its exit code and output. */
export async function runQhcp(args: string[], opts: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = new QhcpProcess(args, opts);
  const t = setTimeout(() => p.signal('SIGKILL'), opts.timeoutMs ?? 20_000);
  const { code } = await p.exited;
  clearTimeout(t);
  return { code, stdout: p.stdout, stderr: p.stderr };
}

/** Starts `qhcp server` on 127.0.0.1 and a free port; resolves once it listens. */
export async function startServer(opts: { port?: number; args?: string[]; cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<{ proc: QhcpProcess; port: number; address: string }> {
  return retryInUse(opts.port, async (port) => {
    const proc = new QhcpProcess(['-server', '-server-ip', '127.0.0.1', '-server-port', String(port), ...(opts.args ?? [])], opts);
    await proc.waitFor(/server listening/, 60_000);
    return { proc, port, address: `127.0.0.1:${port}` };
  });
}

/**
 * Runs `start` on a free port; when someone else took that port between freePort() and the
 * bind (other tests run beside us), tries another one. A port given by the caller is kept.
 */
async function retryInUse<T>(given: number | undefined, start: (port: number) => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const port = given ?? (await freePort());
    try {
      return await start(port);
    } catch (e) {
      if (given !== undefined || attempt >= 3 || !/address already in use/.test(String(e))) throw e;
    }
  }
}

/** Starts `qhcp loadbalancer` for `servers`; resolves once it runs. */
export async function startLoadBalancer(
  servers: string[],
  opts: { port?: number; interval?: number; reconnect?: number; fail?: number; args?: string[]; cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<{ proc: QhcpProcess; port: number }> {
  return retryInUse(opts.port, async (port) => {
    const proc = new QhcpProcess(
      [
        '-loadbalancer',
        '-servers', servers.join(','),
        '-loadbalancer-host', '127.0.0.1',
        '-loadbalancer-port', String(port),
        '-check-interval', String(opts.interval ?? 0.5),
        '-reconnect-interval', String(opts.reconnect ?? 1),
        '-max-fail-attempts', String(opts.fail ?? 3),
        '-status', 'lines',
        ...(opts.args ?? []),
      ],
      opts,
    );
    await proc.waitFor(/load balancer started/, 60_000);
    return { proc, port };
  });
}

/** STATUS from a load balancer's query port. */
/** Config files in temporary folders, each removed by `cleanup()` (call it in afterEach). */
export class TempConfigs {
  private readonly dirs: string[] = [];
  constructor(private readonly prefix: string) {}
  /** Writes `data` as qhcp.config.json in a new folder; returns its path. */
  file(data: object): string {
    const dir = mkdtempSync(join(tmpdir(), this.prefix));
    this.dirs.push(dir);
    const file = join(dir, 'qhcp.config.json');
    writeFileSync(file, JSON.stringify(data));
    return file;
  }
  cleanup(): void {
    for (const d of this.dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  }
}

/** `n` PICKs in a row on one query connection (optionally for one service). */
export async function pickMany(lbPort: number, n: number, service?: string): Promise<Array<{ server: string | null; reason?: string; balancer?: string; why?: string }>> {
  const q = await QueryClient.open({ host: '127.0.0.1', port: lbPort, timeoutMs: 5000 });
  try {
    const out = [];
    for (let i = 0; i < n; i++) out.push(await q.pick(undefined, service));
    return out;
  } finally {
    await q.close();
  }
}

export async function queryStatus(port: number): Promise<ServerStatus[]> {
  const q = await QueryClient.open({ host: '127.0.0.1', port, timeoutMs: 5000 });
  try {
    return (await q.status()).servers;
  } finally {
    await q.close();
  }
}

/**
 * STATUS for one server: answered promptly (the checker is not hung) and listing `address`.
 * @throws when the load balancer does not list it
 */
export async function statusOf(lbPort: number, address: string): Promise<ServerStatus> {
  const s = (await queryStatus(lbPort)).find((x) => x.address === address);
  if (!s) throw new Error(`STATUS does not list ${address}`);
  return s;
}

/** Waits until the load balancer reports `address` in `state`; returns its status. */
export async function waitForState(lbPort: number, address: string, state: ServerStatus['state'], timeoutMs = 20_000): Promise<ServerStatus> {
  return waitUntil(async () => (await queryStatus(lbPort)).find((s) => s.address === address && s.state === state), timeoutMs, `${address} to be ${state}`, 150);
}

/** Stops every process this file started and that is still running (mocha afterEach). */
export async function stopAll(): Promise<void> {
  await Promise.all([...started].map((p) => p.stop(3000)));
}
