/**
 * HAProxy side by side: find or install Debian's `haproxy`, write a config with one TCP
 * listener on loopback and N servers, each with `check` (layer-4 connect) plus `agent-check`
 * against a TCP agent (or, with `httpCheck`, an HTTP listener whose servers are checked with
 * `option httpchk`), run it in the foreground (`-db`) as our child, and read its state
 * changes from its log lines and its stats socket.
 */
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnTracked, endChild } from './children.ts';

export interface HaproxyInfo {
  path: string;
  version: string;
}

/** The haproxy binary, installed with apt-get when missing (root, outside CI); else the reason. */
export function ensureHaproxy(log: (s: string) => void): HaproxyInfo | string {
  const find = () => spawnSync('sh', ['-c', 'command -v haproxy'], { encoding: 'utf8' }).stdout.trim();
  let path = find();
  if (!path) {
    if (process.env.CI) return 'haproxy is not installed and CI is set: not installing it';
    if (process.getuid?.() !== 0) return 'haproxy is not installed and we are not root: run `apt-get install -y haproxy` first';
    log('installing haproxy with apt-get (Debian package) ...');
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    const r1 = spawnSync('apt-get', ['update', '-qq'], { env, encoding: 'utf8', timeout: 300_000 });
    const r2 = r1.status === 0 ? spawnSync('apt-get', ['install', '-y', '-qq', 'haproxy'], { env, encoding: 'utf8', timeout: 300_000 }) : r1;
    if (r2.status !== 0) return `apt-get install haproxy failed: ${(r2.stderr || r2.stdout || '').slice(-300)}`;
    path = find();
    if (!path) return 'apt-get install haproxy succeeded but haproxy is not on PATH';
  }
  const out = execFileSync(path, ['-v'], { encoding: 'utf8' });
  const version = /version (\S+)/.exec(out)?.[1] ?? out.split('\n')[0]!;
  return { path, version };
}

export interface HaproxyOptions {
  /** Server ports (check and agent on the same port). */
  ports: number[];
  intervalMs: number;
  timeoutMs: number;
  fall: number;
  rise: number;
  listenPort: number;
  /** Check the servers with `option httpchk GET <path>` (2xx/3xx pass) instead of connect + agent-check. */
  httpCheck?: string;
}

/** A config of a section's own (its listeners and servers); given the stats socket's path, which it must declare in `global`. */
export interface HaproxyConfig {
  config: (statsSocket: string) => string;
}

export class Haproxy {
  readonly dir = mkdtempSync(join(tmpdir(), 'qhcp-haproxy-'));
  child: ChildProcess | undefined;
  /** Called for each "Server bench/sN is STATE" line with the time it was read. */
  onState: ((index: number, state: string, at: number, line: string) => void) | undefined;
  private log = '';

  constructor(
    private readonly info: HaproxyInfo,
    private readonly opts: HaproxyOptions | HaproxyConfig,
  ) {}

  get pid(): number {
    return this.child!.pid!;
  }
  get socket(): string {
    return join(this.dir, 'stats.sock');
  }

  config(): string {
    if ('config' in this.opts) return this.opts.config(this.socket);
    const o = this.opts;
    const lines = [
      'global',
      '  maxconn 4096',
      // One thread: the comparison is with one Node process (one JavaScript thread).
      '  nbthread 1',
      `  stats socket ${this.socket} mode 600 level admin`,
      'defaults',
      `  mode ${o.httpCheck ? 'http' : 'tcp'}`,
      `  timeout connect ${o.timeoutMs}ms`,
      `  timeout check ${o.timeoutMs}ms`,
      '  timeout client 30s',
      '  timeout server 30s',
      'listen bench',
      `  bind 127.0.0.1:${o.listenPort}`,
      '  balance roundrobin',
      ...(o.httpCheck ? [`  option httpchk GET ${o.httpCheck}`] : []),
      // weight 100: an agent's "75%" scales the weight; of weight 1 it would round to 0.
      `  default-server inter ${o.intervalMs}ms fall ${o.fall} rise ${o.rise} weight 100`,
      ...o.ports.map((p, i) => (o.httpCheck ? `  server s${i} 127.0.0.1:${p} check` : `  server s${i} 127.0.0.1:${p} check agent-check agent-port ${p} agent-inter ${o.intervalMs}ms`)),
    ];
    return lines.join('\n') + '\n';
  }

  /** Starts haproxy in the foreground; resolves once its stats socket answers. */
  async start(): Promise<void> {
    const cfg = join(this.dir, 'haproxy.cfg');
    writeFileSync(cfg, this.config());
    const check = spawnSync(this.info.path, ['-c', '-f', cfg], { encoding: 'utf8' });
    if (check.status !== 0) throw new Error(`haproxy rejects the config: ${check.stderr || check.stdout}`);
    this.child = spawnTracked(this.info.path, ['-f', cfg, '-db'], {
      onLine: (line, at) => {
        this.log = (this.log + line + '\n').slice(-20_000);
        const m = /Server bench\/s(\d+) (?:is (UP|DOWN)\b|enters (drain) state)/.exec(line);
        if (m) this.onState?.(Number(m[1]), m[2] ?? 'DRAIN', at, line);
      },
    });
    for (let i = 0; i < 100; i++) {
      if (this.child.exitCode !== null) throw new Error(`haproxy exited: ${this.log.slice(-1500)}`);
      try {
        await this.command('show info');
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    throw new Error(`haproxy stats socket did not answer: ${this.log.slice(-1500)}`);
  }

  /** One stats-socket command; resolves with its output. */
  command(cmd: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const c = createConnection(this.socket);
      let out = '';
      const t = setTimeout(() => {
        c.destroy();
        reject(new Error(`stats socket: no answer to ${cmd}`));
      }, 5000);
      c.on('connect', () => c.end(`${cmd}\n`));
      c.setEncoding('utf8').on('data', (d: string) => (out += d));
      c.on('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
      c.on('close', () => {
        clearTimeout(t);
        resolve(out);
      });
    });
  }

  /** Server status counts from `show stat` (UP, DOWN, DRAIN, "UP 1/3", ...). */
  async states(): Promise<Record<string, number>> {
    const csv = await this.command('show stat');
    const [head, ...rows] = csv.split('\n').filter((l) => l.trim());
    const cols = head!.replace(/^# /, '').split(',');
    const sv = cols.indexOf('svname');
    const st = cols.indexOf('status');
    const out: Record<string, number> = {};
    for (const r of rows) {
      const f = r.split(',');
      if (!/^s\d+$/.test(f[sv] ?? '')) continue;
      out[f[st]!] = (out[f[st]!] ?? 0) + 1;
    }
    return out;
  }

  /** A server's status by index ("UP", "DOWN", "DRAIN", "UP 1/3" ...). */
  async state(index: number): Promise<string | undefined> {
    const csv = await this.command('show stat');
    const [head, ...rows] = csv.split('\n').filter((l) => l.trim());
    const cols = head!.replace(/^# /, '').split(',');
    const sv = cols.indexOf('svname');
    const st = cols.indexOf('status');
    return rows.map((r) => r.split(',')).find((f) => f[sv] === `s${index}`)?.[st];
  }

  get output(): string {
    return this.log;
  }

  async stop(): Promise<void> {
    if (this.child) await endChild(this.child, 3000);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
