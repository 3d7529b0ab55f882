/**
 * How many TCP connections a service on this host still holds: `qhcp drain --wait-port 8080`
 * waits for this to reach zero before a deploy script goes on. Read from the kernel's socket
 * tables (/proc/net/tcp and /proc/net/tcp6, Linux): established connections whose local port is
 * one of the service's ports, in the network namespace the command runs in. The load balancer
 * cannot count them itself: clients may reach the backend through proxies it only feeds, or
 * directly after a PICK, so the backend host is the one place that sees every connection.
 */
import { readFileSync } from 'node:fs';
import { LocalError } from '../errors.ts';

/** The kernel's socket tables this reads, in the order it reads them. */
export const SOCKET_TABLES = ['/proc/net/tcp', '/proc/net/tcp6'] as const;

/** `st` of an established connection in /proc/net/tcp*. */
const ESTABLISHED = '01';

/**
 * Established connections in one /proc/net/tcp-format table whose local port is in `ports`.
 * Lines that do not parse (the header, anything unexpected) are skipped.
 */
export function countEstablished(table: string, ports: ReadonlySet<number>): number {
  let n = 0;
  for (const line of table.split('\n')) {
    // "  sl  local_address rem_address   st ...": "0: 0100007F:1F90 0100007F:C350 01 ..."
    const f = line.trim().split(/\s+/);
    if (f.length < 4 || f[3] !== ESTABLISHED) continue;
    const colon = f[1]!.lastIndexOf(':');
    if (colon < 0) continue;
    const port = Number.parseInt(f[1]!.slice(colon + 1), 16);
    if (ports.has(port)) n++;
  }
  return n;
}

/**
 * Established connections to `ports` on this host, over every table that exists.
 * @throws LocalError QHCP_ERR_CONTROL when no table can be read (not Linux, no /proc)
 */
export function establishedTo(ports: ReadonlySet<number>, tables: readonly string[] = SOCKET_TABLES): number {
  let n = 0;
  let read = 0;
  for (const file of tables) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    read++;
    n += countEstablished(text, ports);
  }
  if (read === 0) throw new LocalError('QHCP_ERR_CONTROL', `--wait-port counts connections in ${tables.join(' and ')}, which this system does not have (Linux only)`);
  return n;
}

export interface WaitResult {
  ports: number[];
  /** Connections still open when the wait ended (0: drained). */
  left: number;
  waitedMs: number;
}

/**
 * Polls every `everyMs` until no connection to `ports` is left or `timeoutMs` has passed
 * (bounded by both); `progress` is called when the count changes.
 */
export async function waitForNoConnections(
  ports: readonly number[],
  timeoutMs: number,
  progress: (left: number) => void,
  opts: { everyMs?: number; tables?: readonly string[] } = {},
): Promise<WaitResult> {
  const set = new Set(ports);
  const start = Date.now();
  const every = opts.everyMs ?? 250;
  let last = -1;
  for (;;) {
    const left = establishedTo(set, opts.tables);
    if (left !== last) progress(left);
    last = left;
    const waitedMs = Date.now() - start;
    if (left === 0 || waitedMs >= timeoutMs) return { ports: [...ports], left, waitedMs };
    await new Promise((r) => setTimeout(r, Math.min(every, timeoutMs - waitedMs)));
  }
}

/** `8080,8443` -> [8080, 8443]. @throws LocalError QHCP_ERR_CLI_USAGE */
export function parsePorts(v: string): number[] {
  const ports = v.split(',').map((p) => p.trim());
  const out: number[] = [];
  for (const p of ports) {
    const n = /^\d{1,5}$/.test(p) ? Number(p) : NaN;
    if (!(n >= 1 && n <= 65535)) throw new LocalError('QHCP_ERR_CLI_USAGE', `--wait-port: a port or a comma list of ports (1-65535), got "${v}"`);
    if (!out.includes(n)) out.push(n);
  }
  return out;
}
