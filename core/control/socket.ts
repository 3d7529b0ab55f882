/**
 * The agent's control channel: a Unix socket only this host's owner can use (mode 0600, in a
 * directory of mode 0700 when the agent creates it). `qhcp drain`, `qhcp maint`, `qhcp ready`,
 * `qhcp weight N` and `qhcp health` send one JSON line and read one JSON line back.
 *
 *   request:  {"cmd":"drain","reason":"deploy 1.4"} | {"cmd":"maint"} | {"cmd":"ready"}
 *             | {"cmd":"weight","weight":50} | {"cmd":"health"}
 *   answer:   {"ok":true,"health":{verdict,reason?,admin,weight,services?},"checks":[...],"pushed":2}
 *             | {"ok":false,"error":"..."}
 *
 * Bounded: a request line is at most 4 KiB, a connection that sends nothing for 5 s is closed,
 * at most 16 connections at a time.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { mkdirSync, chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { tmpdir } from 'node:os';
import { LocalError, errorText } from '../errors.ts';
import type { AgentHealth } from '../protocol/messages.ts';
import type { AgentAdmin } from '../check/types.ts';

export type ControlRequest =
  | { cmd: 'drain' | 'maint'; reason?: string }
  | { cmd: 'ready' }
  | { cmd: 'weight'; weight: number }
  | { cmd: 'health' };

export interface ControlCheck {
  service: string;
  name: string;
  type: string;
  status: string | null;
  output: string;
  runs: number;
}

export type ControlAnswer =
  | { ok: true; health: AgentHealth; operator: { admin: AgentAdmin; reason?: string; weight: number }; checks: ControlCheck[]; pushed: number }
  | { ok: false; error: string };

const MAX_LINE = 4096;
const IDLE_MS = 5000;
const MAX_CLIENTS = 16;
/** sun_path holds 108 bytes on Linux, the terminating NUL included. */
const MAX_SOCKET_PATH = 107;

/**
 * The default control socket of the agent on UDP `port`: $XDG_RUNTIME_DIR/qhcp/<port>.sock,
 * else /run/qhcp/<port>.sock for root, else <tmpdir>/qhcp-<uid>/<port>.sock.
 */
export function defaultControlSocket(port: number, env: NodeJS.ProcessEnv = process.env, uid: number | undefined = process.getuid?.()): string {
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'qhcp', `${port}.sock`);
  if (uid === 0) return `/run/qhcp/${port}.sock`;
  return join(tmpdir(), `qhcp-${uid ?? 'user'}`, `${port}.sock`);
}

/** Parses one request line. @throws Error naming what is wrong */
export function parseRequest(line: string): ControlRequest {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
  } catch {
    throw new Error('request is not JSON');
  }
  if (!o || typeof o !== 'object' || Array.isArray(o)) throw new Error('request is not a JSON object');
  const reason = o.reason === undefined ? undefined : typeof o.reason === 'string' && o.reason.length <= 1024 ? o.reason : null;
  if (reason === null) throw new Error('reason must be a string of at most 1024 characters');
  switch (o.cmd) {
    case 'drain':
    case 'maint':
      return { cmd: o.cmd, ...(reason ? { reason } : {}) };
    case 'ready':
    case 'health':
      return { cmd: o.cmd };
    case 'weight':
      if (!Number.isInteger(o.weight) || (o.weight as number) < 0 || (o.weight as number) > 256) throw new Error('weight must be an integer from 0 to 256');
      return { cmd: 'weight', weight: o.weight as number };
    default:
      throw new Error(`unknown command ${JSON.stringify(String(o.cmd)).slice(0, 40)} (drain, maint, ready, weight, health)`);
  }
}

export class ControlServer {
  private server: Server | undefined;
  private readonly clients = new Set<Socket>();

  private constructor(
    readonly path: string,
    private readonly handle: (req: ControlRequest) => ControlAnswer | Promise<ControlAnswer>,
  ) {}

  /**
   * Listens on `path` (mode 0600). A stale socket left by a dead agent is replaced; one an
   * agent still answers on is not.
   * @throws LocalError QHCP_ERR_LISTEN with the path and why
   */
  static async listen(path: string, handle: (req: ControlRequest) => ControlAnswer | Promise<ControlAnswer>): Promise<ControlServer> {
    if (Buffer.byteLength(path) > MAX_SOCKET_PATH) throw new LocalError('QHCP_ERR_LISTEN', `control socket path is longer than ${MAX_SOCKET_PATH} bytes: ${path}`);
    try {
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    } catch (e) {
      throw new LocalError('QHCP_ERR_LISTEN', `cannot create the control socket's directory ${dirname(path)}: ${errorText(e)}`);
    }
    await removeStale(path);
    const cs = new ControlServer(path, handle);
    const server = createServer((sock) => cs.client(sock));
    server.maxConnections = MAX_CLIENTS;
    // The socket is created by bind() inside listen(): the umask makes it 0600 from its first moment.
    const old = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(path, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (e) {
      throw new LocalError('QHCP_ERR_LISTEN', `cannot listen on control socket ${path}: ${errorText(e)}`);
    } finally {
      process.umask(old);
    }
    chmodSync(path, 0o600);
    server.unref();
    cs.server = server;
    return cs;
  }

  private client(sock: Socket): void {
    this.clients.add(sock);
    sock.setEncoding('utf8');
    sock.setTimeout(IDLE_MS, () => sock.destroy());
    let buf = '';
    let done = false;
    sock.on('data', (chunk: string) => {
      if (done) return;
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (buf.length > MAX_LINE) {
          done = true;
          sock.end(JSON.stringify({ ok: false, error: `request longer than ${MAX_LINE} bytes` }) + '\n');
        }
        return;
      }
      done = true;
      const line = buf.slice(0, nl);
      void (async () => {
        let answer: ControlAnswer;
        try {
          answer = await this.handle(parseRequest(line));
        } catch (e) {
          answer = { ok: false, error: errorText(e) };
        }
        sock.end(JSON.stringify(answer) + '\n');
      })();
    });
    sock.on('error', () => sock.destroy());
    sock.on('close', () => this.clients.delete(sock));
  }

  async close(): Promise<void> {
    for (const c of this.clients) c.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}

/** Removes a socket file no agent answers on; refuses to touch anything else. */
async function removeStale(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new LocalError('QHCP_ERR_LISTEN', `control socket path ${path} exists and is not a socket`);
  const alive = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (alive) throw new LocalError('QHCP_ERR_LISTEN', `control socket ${path} is in use by a running agent`);
  unlinkSync(path);
}

/**
 * Sends one request to the agent's control socket and returns its answer.
 * @throws LocalError QHCP_ERR_CONTROL when no agent answers there (or it is not ours to use)
 */
export async function controlRequest(path: string, req: ControlRequest, timeoutMs = 5000): Promise<ControlAnswer> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new LocalError('QHCP_ERR_CONTROL', `no answer from the agent's control socket ${path} within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(JSON.stringify(req) + '\n'));
    sock.on('data', (c: string) => {
      buf += c;
      if (buf.length > 1_000_000) sock.destroy(new Error('answer too large'));
    });
    sock.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const why =
        e.code === 'ENOENT' || e.code === 'ECONNREFUSED'
          ? 'no agent is listening there (is `qhcp server` running? --socket / --server-port name another?)'
          : e.code === 'EACCES'
            ? 'permission denied (the control socket belongs to the user running the agent)'
            : errorText(e);
      reject(new LocalError('QHCP_ERR_CONTROL', `control socket ${path}: ${why}`));
    });
    sock.on('end', () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(buf.trim()) as ControlAnswer);
      } catch {
        reject(new LocalError('QHCP_ERR_CONTROL', `control socket ${path}: the answer is not JSON`));
      }
    });
  });
}
