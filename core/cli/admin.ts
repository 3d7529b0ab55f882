/**
 * `qhcp admin list|add|remove|drain|ready|maint|weight`: the load balancer's admin API
 * (docs/operations.md, "Admin API") from the command line, over HTTP with the bearer token.
 */
import { readToken } from '../http/token.ts';
import { LocalError, QhcpError } from '../errors.ts';
import { sanitize } from '../util/sanitize.ts';

export interface AdminCliOptions {
  url: string;
  tokenFile?: string;
  json?: boolean;
  timeout?: number;
}

const STATE: Record<string, string> = { drain: 'DRAIN', ready: 'READY', maint: 'MAINT' };

interface BackendRow {
  address: string;
  state: string;
  adminState: string | null;
  agentAdmin: string | null;
  weight: number;
  verdict: string | null;
  lastError: string | null;
}

/** Runs one admin action; prints the result; @throws QhcpError with a one-line message. */
export async function runAdmin(action: string, args: string[], o: AdminCliOptions): Promise<void> {
  const base = o.url.endsWith('/') ? o.url : `${o.url}/`;
  const token = o.tokenFile ? readToken(o.tokenFile) : undefined;
  const call = async (method: string, path: string, body?: unknown): Promise<Record<string, unknown>> => {
    let res: Response;
    try {
      res = await fetch(new URL(path, base), {
        method,
        headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...(token ? { authorization: `Bearer ${token}` } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout((o.timeout ?? 5) * 1000),
      });
    } catch (e) {
      throw new QhcpError('QHCP_ERR_CONNECT', `cannot reach ${base}: ${(e as { cause?: { code?: string } }).cause?.code ?? (e as Error).message}`);
    }
    const data = (await res.json().catch(() => ({}))) as Record<string, unknown>;
    if (!res.ok) throw new QhcpError('QHCP_ERR_CONNECT', `${method} ${path}: ${res.status} ${sanitize(String(data.error ?? ''))}: ${sanitize(String(data.message ?? res.statusText), 300)}`);
    return data;
  };
  const address = () => {
    const a = args[0];
    if (!a) throw new LocalError('QHCP_ERR_CLI_USAGE', `admin ${action}: give the backend address (host:port or host:port/service)`);
    return encodeURIComponent(a);
  };
  const print = (data: unknown, line: string): void => {
    process.stdout.write(o.json ? JSON.stringify(data) + '\n' : `${line}\n`);
  };
  switch (action) {
    case 'list': {
      const data = (await call('GET', 'api/backends')) as { backends: BackendRow[] };
      if (o.json) return print(data, '');
      const rows = data.backends.map((b) => [b.address, b.state, b.adminState ?? '-', b.agentAdmin ?? '-', String(b.weight), b.verdict ?? '-', sanitize(b.lastError ?? '', 120)]);
      const head = ['BACKEND', 'STATE', 'LB ADMIN', 'AGENT ADMIN', 'WEIGHT', 'VERDICT', 'LAST ERROR'];
      const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
      for (const r of [head, ...rows]) process.stdout.write(r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(w[i]!))).join('  ').trimEnd() + '\n');
      return;
    }
    case 'add': {
      if (!args[0]) throw new LocalError('QHCP_ERR_CLI_USAGE', 'admin add: give the backend address (host:port or host:port/service)');
      const data = (await call('POST', 'api/backends', { address: args[0] })) as { backend: BackendRow };
      return print(data, `added ${data.backend.address} (${data.backend.state})`);
    }
    case 'remove': {
      const data = (await call('DELETE', `api/backends/${address()}`)) as { removed: string };
      return print(data, `removed ${data.removed}`);
    }
    case 'drain':
    case 'ready':
    case 'maint': {
      const data = (await call('PUT', `api/backends/${address()}/admin`, { state: STATE[action] })) as { backend: BackendRow };
      return print(data, `${data.backend.address}: admin ${data.backend.adminState}, state ${data.backend.state}`);
    }
    case 'weight': {
      const n = Number(args[1]);
      if (args[1] === undefined || !Number.isInteger(n)) throw new LocalError('QHCP_ERR_CLI_USAGE', `admin weight: give the backend address and an integer weight, got "${args[1] ?? ''}"`);
      const data = (await call('PUT', `api/backends/${address()}/weight`, { weight: n })) as { backend: BackendRow };
      return print(data, `${data.backend.address}: weight ${data.backend.weight}`);
    }
    default:
      throw new LocalError('QHCP_ERR_CLI_USAGE', `admin: unknown action "${action}" (list, add, remove, drain, ready, maint, weight)`);
  }
}
