/**
 * HAProxy's runtime API (the "stats socket" at `level admin`), one command per connection: the
 * socket is written, HAProxy answers and closes. A Unix socket path or a TCP host:port.
 * `set ...` commands answer an empty line on success; any text is HAProxy's error.
 */
import { createConnection } from 'node:net';
import { parseAddress } from '../../core/util/address.ts';
import { SyncCommandError } from './common.ts';

export type SocketSpec = { path: string } | { host: string; port: number };

/** "/run/haproxy/admin.sock", "./x.sock", "unix@/x.sock" -> path; "127.0.0.1:9999" -> TCP. */
export function parseSocket(text: string): SocketSpec {
  if (text.startsWith('unix@')) return { path: text.slice(5) };
  if (text.startsWith('/') || text.startsWith('.')) return { path: text };
  const a = parseAddress(text.replace(/^ipv[46]@/, ''), 0);
  if (a.port === 0) throw new RangeError(`socket "${text}": a TCP socket needs host:port`);
  return a;
}

/** At most this much of an answer is kept (a `show servers state` of thousands of servers fits). */
const MAX_ANSWER = 8 * 1024 * 1024;

/** Sends one command; resolves with HAProxy's answer. @throws SyncCommandError naming the command */
export function haproxyCommand(socket: SocketSpec, command: string, timeoutMs: number): Promise<string> {
  if (/[\r\n;]/.test(command)) return Promise.reject(new SyncCommandError(command, 'a command must be one line without ";"'));
  return new Promise((resolve, reject) => {
    const s = 'path' in socket ? createConnection(socket.path) : createConnection(socket.port, socket.host);
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (err: Error | null) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      if (err) reject(new SyncCommandError(command, err.message));
      else resolve(Buffer.concat(chunks).toString('utf8'));
    };
    const timer = setTimeout(() => finish(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    s.on('connect', () => s.end(`${command}\n`));
    s.on('data', (d: Buffer) => {
      size += d.length;
      if (size > MAX_ANSWER) return finish(new Error(`answer longer than ${MAX_ANSWER} bytes`));
      chunks.push(d);
    });
    s.on('error', (e) => finish(e));
    s.on('close', () => finish(null));
  });
}

/** One line of `show servers state`. */
export interface HaproxyServer {
  backend: string;
  name: string;
  addr: string;
  port: number;
  /** 0 stopped (down), 1 starting, 2 running, 3 stopping. */
  opState: number;
  /** Bit field: 0x01 forced maintenance, 0x08 forced drain (set by the CLI), others inherited. */
  adminState: number;
  uweight: number;
  iweight: number;
}

export const ADMIN_FMAINT = 0x01;
export const ADMIN_FDRAIN = 0x08;

/** Parses `show servers state` (format 1: a version line, a `# name ...` header, then rows). */
export function parseServersState(text: string): HaproxyServer[] {
  const lines = text.split('\n');
  const header = lines.find((l) => l.startsWith('# '));
  if (!header) throw new Error(`unexpected "show servers state" answer: ${JSON.stringify(text.slice(0, 200))}`);
  const cols = header.slice(2).trim().split(/\s+/);
  const at = (n: string) => {
    const i = cols.indexOf(n);
    if (i < 0) throw new Error(`"show servers state" has no column ${n}`);
    return i;
  };
  const ix = { be: at('be_name'), name: at('srv_name'), addr: at('srv_addr'), op: at('srv_op_state'), admin: at('srv_admin_state'), uw: at('srv_uweight'), iw: at('srv_iweight'), port: at('srv_port') };
  const out: HaproxyServer[] = [];
  for (const l of lines) {
    if (!l.trim() || l.startsWith('#') || /^\d+$/.test(l.trim())) continue;
    const f = l.trim().split(/\s+/);
    if (f.length < cols.length - 1) continue;
    out.push({
      backend: f[ix.be]!,
      name: f[ix.name]!,
      addr: f[ix.addr]!,
      port: Number(f[ix.port]),
      opState: Number(f[ix.op]),
      adminState: Number(f[ix.admin]),
      uweight: Number(f[ix.uw]),
      iweight: Number(f[ix.iw]),
    });
  }
  return out;
}
