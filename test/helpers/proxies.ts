/**
 * Real peers for the sync and proxy plugin tests: small HTTP backends (each answers its own
 * name), TCP echo backends, and Debian's haproxy / nginx / caddy started as our children in a
 * temporary folder on free loopback ports, stopped by PID.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, request, type Server as HttpServer } from 'node:http';
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, sleep, waitUntil } from './procs.ts';

/** The path of `cmd`, or undefined when it is not installed. */
export function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.stdout.trim() || undefined;
}

export interface NamedBackend {
  name: string;
  port: number;
  server: HttpServer;
  /** Requests answered so far. */
  hits: number;
}

/** `n` HTTP servers on 127.0.0.1, each answering `GET /` with its name (b1, b2, ...). */
export async function httpBackends(n: number, prefix = 'b'): Promise<NamedBackend[]> {
  const out: NamedBackend[] = [];
  for (let i = 1; i <= n; i++) {
    const b = { name: `${prefix}${i}`, port: 0, server: undefined as unknown as HttpServer, hits: 0 };
    b.server = createHttpServer((req, res) => {
      b.hits++;
      req.resume();
      res.setHeader('connection', 'close');
      res.end(b.name);
    });
    await new Promise<void>((r) => b.server.listen(0, '127.0.0.1', () => r()));
    b.port = (b.server.address() as { port: number }).port;
    out.push(b);
  }
  return out;
}

export async function closeAll(servers: Array<{ close(cb?: () => void): unknown; closeAllConnections?: () => void }>): Promise<void> {
  await Promise.all(
    servers.map(
      (s) =>
        new Promise<void>((r) => {
          s.closeAllConnections?.();
          s.close(() => r());
        }),
    ),
  );
}

/** GET http://127.0.0.1:port/ (no keep-alive); the body, or `ERR <status|error>`. */
export function httpGet(port: number, path = '/', timeoutMs = 3000): Promise<string> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false, timeout: timeoutMs, headers: { connection: 'close' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve(res.statusCode === 200 ? body : `ERR ${res.statusCode}`));
      res.on('error', (e) => resolve(`ERR ${e.message}`));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve(`ERR ${e.message}`));
    req.end();
  });
}

/** `count` GETs one after another; the bodies. */
export async function gets(port: number, count: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < count; i++) out.push(await httpGet(port));
  return out;
}

/**
 * Polls until requests through the proxy at `port` reach exactly the backends `names` (a reload
 * or an API change takes a moment), then checks that 20 more reach those and no other.
 */
export async function expectOnly(port: number, names: string[], proxy: string): Promise<void> {
  await waitUntil(async () => {
    const seen = new Set(await gets(port, 6));
    return seen.size === names.length && names.every((n) => seen.has(n));
  }, 10_000, `${proxy} serving only ${names.join(',')}`);
  const after = new Set(await gets(port, 20));
  if (after.size !== names.length || !names.every((n) => after.has(n))) {
    throw new Error(`${proxy}: 20 requests reached ${[...after].join(',')}, expected only ${names.join(',')}`);
  }
}

export interface EchoBackend {
  port: number;
  server: TcpServer;
  sockets: Set<Socket>;
  /** Connections accepted so far. */
  accepted: number;
}

/** A TCP echo server on 127.0.0.1 (optionally prefixing each connection with a greeting). */
export async function echoBackend(greeting?: string): Promise<EchoBackend> {
  const e: EchoBackend = { port: 0, server: undefined as unknown as TcpServer, sockets: new Set(), accepted: 0 };
  e.server = createTcpServer((s) => {
    e.accepted++;
    e.sockets.add(s);
    s.on('close', () => e.sockets.delete(s));
    s.on('error', () => {});
    if (greeting) s.write(greeting);
    s.pipe(s);
  });
  await new Promise<void>((r) => e.server.listen(0, '127.0.0.1', () => r()));
  e.port = (e.server.address() as { port: number }).port;
  return e;
}

export async function closeEcho(e: EchoBackend): Promise<void> {
  for (const s of e.sockets) s.destroy();
  await new Promise<void>((r) => e.server.close(() => r()));
}

/** A child process (haproxy, nginx, caddy) with its output kept, stopped by PID. */
export class Child {
  out = '';
  readonly exited: Promise<number | null>;
  constructor(readonly proc: ChildProcess) {
    proc.stdout?.on('data', (d: Buffer) => (this.out = (this.out + d.toString()).slice(-20000)));
    proc.stderr?.on('data', (d: Buffer) => (this.out = (this.out + d.toString()).slice(-20000)));
    this.exited = new Promise((r) => proc.once('exit', (code) => r(code)));
  }
  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }
  async stop(graceMs = 3000): Promise<void> {
    if (!this.running) return;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
  }
}

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export class Haproxy {
  child: Child | undefined;
  readonly socket: string;
  readonly cfg: string;
  constructor(readonly dir: string) {
    this.socket = join(dir, 'admin.sock');
    this.cfg = join(dir, 'haproxy.cfg');
  }

  /** Starts haproxy -db -f cfg (the config written first); resolves once its stats socket answers. */
  async start(config: string): Promise<void> {
    writeFileSync(this.cfg, config);
    const chk = spawnSync(which('haproxy')!, ['-c', '-q', '-f', this.cfg], { encoding: 'utf8' });
    if (chk.status !== 0) throw new Error(`haproxy config invalid: ${chk.stderr}${chk.stdout}`);
    rmSync(this.socket, { force: true });
    this.child = new Child(spawn(which('haproxy')!, ['-db', '-f', this.cfg], { stdio: ['ignore', 'pipe', 'pipe'] }));
    await waitUntil(() => existsSync(this.socket) || !this.child!.running, 10_000, 'haproxy stats socket');
    if (!this.child.running) throw new Error(`haproxy exited: ${this.child.out}`);
  }

  /**
   * Starts HAProxy with a config binding one frontend port, picked free here. Tests run in
   * parallel: a port another process takes between the pick and HAProxy's bind is picked again
   * (at most three times). Resolves with the port.
   */
  async startOnFreePort(config: (port: number) => string): Promise<number> {
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      try {
        await this.start(config(port));
        return port;
      } catch (e) {
        if (attempt >= 3 || !String((e as Error).message).includes('Address already in use')) throw e;
      }
    }
  }

  async stop(): Promise<void> {
    await this.child?.stop();
  }
}

/** The global/defaults part of an HAProxy config with an admin socket in `h.dir`. */
export function haproxyHead(h: Haproxy, mode: 'http' | 'tcp' = 'http'): string {
  return [
    'global',
    `  stats socket ${h.socket} mode 600 level admin`,
    '  nbthread 1',
    'defaults',
    `  mode ${mode}`,
    '  timeout connect 1s',
    '  timeout client 10s',
    '  timeout server 10s',
    '  timeout check 1s',
    '',
  ].join('\n');
}

export { freePort, sleep, waitUntil };
