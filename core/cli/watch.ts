/**
 * `qhcp watch`: follows a load balancer's view (WATCH) and prints every change as it happens:
 * one line per backend that changed (and per backend of a full view), or with `--json` one JSON
 * object per update for scripts. Connection events (connected, disconnected, stale) go to stderr
 * as `# ...` lines, or into the JSON stream as objects with their `event`. Strings that came from
 * the network are escaped (core/util/sanitize.ts).
 */
import type { WatchChange, WatchedBackend, WatchView } from '../client/watch.ts';
import { sanitize, safeJson } from '../util/sanitize.ts';
import { adminText } from './status.ts';

/** One line for a backend in an update: `v8 full 10.0.0.2:4243/web UP verdict=SERVING ...`. */
export function memberLine(version: number, kind: string, b: WatchedBackend): string {
  const m = b.metrics;
  const load = m.loadScore !== undefined ? ` load=${m.loadScore}` : '';
  const reason = b.reason ? ` reason=${safeJson(sanitize(b.reason, 300))}` : '';
  return `v${version} ${kind} ${sanitize(b.address, 300)} ${b.state} verdict=${b.verdict} admin=${adminText(b)} weight=${Math.round(b.weight * 100) / 100}${load}${reason}`;
}

/** The lines of one change (a full view with no members prints one line saying so). */
export function changeLines(c: WatchChange, members: readonly WatchedBackend[]): string[] {
  const kind = c.kind === 'full' ? (c.resync ? 'resync' : 'full') : 'change';
  const shown = c.kind === 'full' ? members : c.changed;
  const lines = shown.map((b) => memberLine(c.version, kind, b));
  for (const a of c.removed) lines.push(`v${c.version} removed ${sanitize(a, 300)}`);
  if (lines.length === 0) lines.push(`v${c.version} ${kind} (no backends)`);
  return lines;
}

/** The JSON object of one change. */
export function changeJson(c: WatchChange, view: WatchView, members: readonly WatchedBackend[]): string {
  const strip = (b: WatchedBackend) => {
    const { reportedAt: _r, latencyMs: _l, ageMs: _a, ...rest } = b;
    return rest;
  };
  return safeJson({
    event: 'change',
    kind: c.kind,
    run: view.run,
    version: c.version,
    ...(c.from !== undefined ? { from: c.from } : {}),
    ...(c.kind === 'full' ? { members: members.map(strip) } : { changed: c.changed.map(strip) }),
    removed: c.removed,
    resync: c.resync,
    restarted: c.restarted,
    at: c.at,
  });
}

export interface WatchCommandOptions {
  json?: boolean;
  /** Stop after this many updates (the first full view counts). */
  count?: number;
  /** Stop after this many seconds. */
  duration?: number;
  out: (text: string) => void;
  err: (text: string) => void;
}

/**
 * Prints `view`'s updates until `count` or `duration` is reached or SIGINT / SIGTERM comes;
 * resolves then. Call before `view.start()` so that the first full view is printed too.
 */
export function printWatch(view: WatchView, o: WatchCommandOptions): Promise<void> {
  return new Promise((resolve) => {
    let seen = 0;
    let timer: NodeJS.Timeout | undefined;
    const done = () => {
      view.off('change', onChange);
      clearTimeout(timer);
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      resolve();
    };
    const onChange = (c: WatchChange) => {
      if (o.json) o.out(changeJson(c, view, view.members) + '\n');
      else o.out(changeLines(c, view.members).join('\n') + '\n');
      if (o.count !== undefined && ++seen >= o.count) done();
    };
    const note = (event: string, fields: Record<string, unknown>, text: string) => {
      if (o.json) o.out(safeJson({ event, ...fields, at: Date.now() }) + '\n');
      else o.err(`# ${text}\n`);
    };
    view.on('connected', (e) => note('connected', e, `connected to ${e.address} (${sanitize(e.node, 128)}, run ${e.run})`));
    view.on('disconnected', (e) => note('disconnected', e, `disconnected from ${e.address}: ${sanitize(e.reason, 300)}; keeping the last view`));
    view.on('stale', (e) => note('stale', e, `view is stale (no load balancer since ${new Date(e.since).toISOString()})`));
    view.on('change', onChange);
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
    if (o.duration !== undefined) timer = setTimeout(done, o.duration * 1000);
  });
}
