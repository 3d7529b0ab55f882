/**
 * The load balancer's status view: a table redrawn in place on a terminal, `key=value` lines
 * otherwise (logs, pipes), or JSON lines for scripts. Also used by `qhcp status`. Lines and JSON
 * print a server when it changes plus a full summary every `statusSummary` seconds
 * (StatusPrinter), not every server every interval. Strings that came from a peer (an agent's
 * reason, an ERROR's text) are sanitised before they reach a terminal (core/util/sanitize.ts).
 */
import type { ServerStatus } from '../protocol/messages.ts';
import { sanitize, safeJson } from '../util/sanitize.ts';

export type StatusFormat = 'table' | 'lines' | 'json';

function pct(v: number | undefined): string {
  return v === undefined ? '-' : `${v.toFixed(1)}%`;
}
function num(v: number | undefined, digits = 2): string {
  return v === undefined ? '-' : v.toFixed(digits);
}
export function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** The admin state shown: the stricter of the agent's and the load balancer's, and whose it is. */
export function adminText(s: Pick<ServerStatus, 'agentAdmin' | 'adminState'>): string {
  const agent = s.agentAdmin ?? 'READY';
  const lb = s.adminState ?? 'READY';
  const rank = { READY: 0, DRAIN: 1, MAINT: 2 } as const;
  if (agent === 'READY' && lb === 'READY') return 'READY';
  if (rank[lb] > rank[agent]) return `${lb}(lb)`;
  if (rank[agent] > rank[lb]) return `${agent}(agent)`;
  return `${agent}(both)`;
}

/**
 * Why the server is where it is, sanitised: in UP and UNKNOWN the last check error (if any);
 * otherwise the reason of its state (the agent's reason, the transition's), else the last error.
 */
export function reasonText(s: ServerStatus): string {
  const text = s.state === 'UP' || s.state === 'UNKNOWN' ? s.lastError : (s.reason ?? s.lastError);
  return text ? sanitize(text, 300) : '';
}

function weightText(w: number | undefined): string {
  return w === undefined ? '-' : String(Math.round(w * 100) / 100);
}

/** The weight column: "1", or "0.35 of 1" while slow start ramps the backend. */
function rampText(s: Pick<ServerStatus, 'weight' | 'effectiveWeight'>): string {
  return s.effectiveWeight === undefined ? weightText(s.weight) : `${weightText(s.effectiveWeight)} of ${weightText(s.weight)}`;
}

/** ", PANIC: picks go to every known backend" when the servers' pool is in panic mode. */
function panicText(servers: readonly ServerStatus[]): string {
  return servers.some((s) => s.panic) ? ', PANIC: picks go to every known backend' : '';
}

const COLUMNS = ['SERVER', 'STATE', 'VERDICT', 'ADMIN', 'WEIGHT', 'CPU', 'MEM', 'LOAD1', 'SCORE', 'LATENCY', 'FAILS', 'IN STATE', 'REASON'] as const;
/** In a load balancer group (`cluster`): the members that checked each server, before REASON. */
const CHECKED_BY = 'CHECKED BY';

/** The members that checked `s` ("lb-1,lb-2"; "-" when none did). */
function checkedByText(s: ServerStatus): string {
  return s.checkedBy?.map((m) => sanitize(m, 128)).join(',') || '-';
}

function row(s: ServerStatus, now: number, checkedBy: boolean): string[] {
  const m = s.metrics;
  // Address and last error come from the network (a load balancer, through it an agent).
  return [
    sanitize(s.address, 300),
    s.state,
    s.verdict ?? '-',
    adminText(s),
    rampText(s),
    pct(m.cpu),
    pct(m.memory),
    num(m.load1),
    num(m.loadScore),
    s.latencyMs === null ? '-' : `${s.latencyMs.toFixed(1)}ms`,
    String(s.failures),
    duration(now - s.since),
    ...(checkedBy ? [checkedByText(s)] : []),
    reasonText(s),
  ];
}

/** A fixed-width table with a header line. */
export function renderTable(servers: readonly ServerStatus[], now = Date.now(), title?: string): string {
  // The CHECKED BY column only when some server has the field (a load balancer in a group).
  const checkedBy = servers.some((s) => s.checkedBy !== undefined);
  const columns: readonly string[] = checkedBy ? [...COLUMNS.slice(0, -1), CHECKED_BY, COLUMNS.at(-1)!] : COLUMNS;
  const rows = servers.map((s) => row(s, now, checkedBy));
  const widths = columns.map((c, i) => Math.max(c.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (cells: readonly string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  const head = title ?? `qhcp load balancer - ${countText(servers)}${panicText(servers)} - ${new Date(now).toISOString()}`;
  return [head, fmt(columns), ...rows.map(fmt)].join('\n');
}

/** "2/3 UP" plus the other states present: "2/4 UP, 1 DEGRADED, 1 DOWN". */
export function countText(servers: readonly ServerStatus[]): string {
  const by = new Map<string, number>();
  for (const s of servers) by.set(s.state, (by.get(s.state) ?? 0) + 1);
  const others = [...by].filter(([k]) => k !== 'UP').map(([k, n]) => `${n} ${k}`);
  return [`${by.get('UP') ?? 0}/${servers.length} UP`, ...others].join(', ');
}

/** One `key=value` line for a server. */
export function renderLine(s: ServerStatus, now = Date.now()): string {
  const m = s.metrics;
  const parts = [
    `${new Date(now).toISOString()} server=${sanitize(s.address, 300)}`,
    `state=${s.state}`,
    `cpu=${pct(m.cpu)}`,
    `mem=${pct(m.memory)}`,
    `load1=${num(m.load1)}`,
    `score=${num(m.loadScore)}`,
    `latency=${s.latencyMs === null ? '-' : `${s.latencyMs.toFixed(1)}ms`}`,
    `failures=${s.failures}`,
    `in_state=${duration(now - s.since)}`,
  ];
  if (s.service !== undefined) parts.push(`service=${sanitize(s.service, 64)}`);
  if (s.verdict !== undefined) parts.push(`verdict=${s.verdict}`);
  if (s.agentAdmin !== undefined || s.adminState !== undefined) parts.push(`admin=${adminText(s)}`);
  if (s.weight !== undefined) parts.push(`weight=${weightText(s.weight)}`);
  if (s.effectiveWeight !== undefined) parts.push(`slow_start_weight=${weightText(s.effectiveWeight)}`);
  if (s.panic) parts.push('panic=true');
  if (s.state !== 'UP' && s.state !== 'UNKNOWN' && s.reason) parts.push(`reason=${safeJson(sanitize(s.reason, 300))}`);
  if (s.lastError) parts.push(`last_error=${safeJson(sanitize(s.lastError, 300))}`);
  if (s.checkedBy !== undefined) parts.push(`checked_by=${checkedByText(s)}`);
  return parts.join(' ');
}

/** One `key=value` line per server, for logs and pipes. */
export function renderLines(servers: readonly ServerStatus[], now = Date.now()): string {
  return servers.map((s) => renderLine(s, now)).join('\n');
}

export function renderJson(servers: readonly ServerStatus[], now = Date.now()): string {
  return servers.map((s) => safeJson({ time: now, ...s })).join('\n');
}

export function render(format: StatusFormat, servers: readonly ServerStatus[], now = Date.now()): string {
  return format === 'table' ? renderTable(servers, now) : format === 'json' ? renderJson(servers, now) : renderLines(servers, now);
}

/** What `status: auto` means: the redrawn table on a terminal, plain lines anywhere else. */
export function resolveFormat(setting: StatusFormat | 'auto' | 'none', isTTY: boolean): StatusFormat | 'none' {
  return setting === 'auto' ? (isTTY ? 'table' : 'lines') : setting;
}

/** The text written for one status tick: the table redraws the screen in place, the others append. */
export function statusFrame(format: StatusFormat, servers: readonly ServerStatus[], now = Date.now()): string {
  const text = render(format, servers, now);
  return format === 'table' ? `\x1b[H\x1b[2J${text}\n` : `${text}\n`;
}

/** What counts as a change worth a line: state, verdict, admin states, weight, reason, whether a check is failing. */
function signature(s: ServerStatus): string {
  return JSON.stringify([s.state, s.verdict ?? null, s.agentAdmin ?? null, s.adminState ?? null, s.weight ?? null, s.reason ?? null, s.failures > 0]);
}

/**
 * Decides what the load balancer prints. The table is redrawn every tick. Lines and JSON: with
 * `summaryMs` 0, every server every tick (the old behaviour); otherwise a server's line when it
 * changes (state, verdict, admin, weight, reason, a check starting or stopping to fail), added or
 * removed, and every server at the first tick and every `summaryMs` after, with a summary line.
 */
export class StatusPrinter {
  private readonly last = new Map<string, string>();
  private nextSummary = 0;

  constructor(
    private readonly format: StatusFormat,
    private readonly summaryMs: number,
    private readonly write: (text: string) => void,
  ) {}

  /** One tick (every check interval), or a `change` (a transition, a backend added or removed): prints what is due. */
  update(servers: readonly ServerStatus[], now = Date.now(), change = false): void {
    if (this.format === 'table' || this.summaryMs <= 0) {
      if (!change) this.write(statusFrame(this.format, servers, now));
      return;
    }
    const changed: ServerStatus[] = [];
    const seen = new Set<string>();
    for (const s of servers) {
      seen.add(s.address);
      const sig = signature(s);
      if (this.last.get(s.address) !== sig) changed.push(s);
      this.last.set(s.address, sig);
    }
    const gone = [...this.last.keys()].filter((a) => !seen.has(a));
    for (const a of gone) this.last.delete(a);
    const summary = now >= this.nextSummary;
    const out: string[] = [];
    if (summary) {
      this.nextSummary = now + this.summaryMs;
      out.push(this.summaryLine(servers, now));
      if (servers.length) out.push(render(this.format, servers, now));
    } else if (changed.length) out.push(render(this.format, changed, now));
    for (const a of gone) out.push(this.format === 'json' ? safeJson({ time: now, address: a, removed: true }) : `${new Date(now).toISOString()} server=${sanitize(a, 300)} removed`);
    if (out.length) this.write(`${out.join('\n')}\n`);
  }

  private summaryLine(servers: readonly ServerStatus[], now: number): string {
    const text = `${countText(servers)} (next summary in ${Math.round(this.summaryMs / 1000)}s; changes print at once)`;
    return this.format === 'json' ? safeJson({ time: now, summary: text, servers: servers.length }) : `${new Date(now).toISOString()} summary ${text}`;
  }
}
