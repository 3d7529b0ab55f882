/**
 * The load balancer's status view: a table redrawn in place on a terminal, one plain line per
 * server otherwise (logs, pipes), or JSON lines for scripts. Also used by `qhcp status`.
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

const COLUMNS = ['SERVER', 'STATE', 'CPU', 'MEM', 'LOAD1', 'SCORE', 'LATENCY', 'FAILS', 'IN STATE', 'LAST ERROR'] as const;

function row(s: ServerStatus, now: number): string[] {
  const m = s.metrics;
  // Address and last error come from the network (a load balancer, through it an agent).
  return [
    sanitize(s.address, 300),
    sanitize(s.state),
    pct(m.cpu),
    pct(m.memory),
    num(m.load1),
    num(m.loadScore),
    s.latencyMs === null ? '-' : `${s.latencyMs.toFixed(1)}ms`,
    String(s.failures),
    duration(now - s.since),
    sanitize(s.lastError ?? '', 1024),
  ];
}

/** A fixed-width table with a header line. */
export function renderTable(servers: readonly ServerStatus[], now = Date.now(), title?: string): string {
  const rows = servers.map((s) => row(s, now));
  const widths = COLUMNS.map((c, i) => Math.max(c.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (cells: readonly string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  const up = servers.filter((s) => s.state === 'UP').length;
  const head = title ?? `qhcp load balancer - ${up}/${servers.length} UP - ${new Date(now).toISOString()}`;
  return [head, fmt(COLUMNS), ...rows.map(fmt)].join('\n');
}

/** One `key=value` line per server, for logs and pipes. */
export function renderLines(servers: readonly ServerStatus[], now = Date.now()): string {
  const t = new Date(now).toISOString();
  return servers
    .map((s) => {
      const m = s.metrics;
      const parts = [
        `${t} server=${sanitize(s.address, 300)}`,
        `state=${sanitize(s.state)}`,
        `cpu=${pct(m.cpu)}`,
        `mem=${pct(m.memory)}`,
        `load1=${num(m.load1)}`,
        `score=${num(m.loadScore)}`,
        `latency=${s.latencyMs === null ? '-' : `${s.latencyMs.toFixed(1)}ms`}`,
        `failures=${s.failures}`,
        `in_state=${duration(now - s.since)}`,
      ];
      if (s.lastError) parts.push(`last_error=${safeJson(s.lastError)}`);
      return parts.join(' ');
    })
    .join('\n');
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
