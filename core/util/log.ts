/**
 * A small leveled logger writing one line per event to stderr (stdout belongs to the status
 * table). JSON lines (pino's keys: time, level, msg, then the fields) when stderr is not a
 * terminal, human lines `time level message key=value` on a terminal; QHCP_LOG_FORMAT=json|text
 * forces one. The message (the event name) is the same in both.
 * `limited()` rate-limits noisy sources (bad peers): at most `burst` lines per key per window,
 * the rest counted and summarised when the window rolls over, so a flood cannot fill a disk.
 */
import { sanitize, safeJson } from './sanitize.ts';

export type Level = 'debug' | 'info' | 'warn' | 'error' | 'silent';
const RANK: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

export interface Logger {
  level: Level;
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  /** Like warn, but at most `burst` lines per `key` per window; returns whether it printed. */
  limited(key: string, msg: string, fields?: Record<string, unknown>): boolean;
  /** Lines suppressed by `limited` so far, per key. */
  readonly suppressed: Map<string, number>;
}

export interface LoggerOptions {
  level?: Level;
  json?: boolean;
  write?: (line: string) => void;
  burst?: number;
  windowMs?: number;
  name?: string;
}

function fmtValue(v: unknown): string {
  if (typeof v === 'string') return /[\s"=]/.test(v) ? safeJson(v) : sanitize(v);
  if (v instanceof Error) return safeJson(v.message);
  return safeJson(v);
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const env = process.env.QHCP_LOG_FORMAT;
  // A logger with its own writer (tests, embedding) keeps text unless asked; stderr decides by itself.
  const json = opts.json ?? (env === 'json' ? true : env === 'text' ? false : opts.write ? false : process.stderr.isTTY !== true);
  const write = opts.write ?? ((line: string) => process.stderr.write(line + '\n'));
  const burst = opts.burst ?? 20;
  const windowMs = opts.windowMs ?? 10_000;
  const windows = new Map<string, { start: number; count: number; dropped: number }>();
  const suppressed = new Map<string, number>();

  const emit = (level: Level, msg: string, fields?: Record<string, unknown>) => {
    if (RANK[level] < RANK[logger.level]) return;
    const time = new Date().toISOString();
    // Fields often carry a peer's strings (node names, reasons): never raw on a terminal.
    if (json) {
      write(safeJson({ time, level, ...(opts.name ? { name: opts.name } : {}), msg, ...fields }));
    } else {
      const kv = fields ? Object.entries(fields).map(([k, v]) => ` ${sanitize(k)}=${fmtValue(v)}`).join('') : '';
      write(`${time} ${level.toUpperCase().padEnd(5)} ${opts.name ? `[${opts.name}] ` : ''}${sanitize(msg)}${kv}`);
    }
  };

  const logger: Logger = {
    level: opts.level ?? ((process.env.QHCP_LOG_LEVEL as Level | undefined) ?? 'info'),
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    suppressed,
    limited(key, msg, fields) {
      const now = Date.now();
      let w = windows.get(key);
      if (!w || now - w.start >= windowMs) {
        if (w && w.dropped > 0) emit('warn', `suppressed ${w.dropped} similar lines`, { key });
        w = { start: now, count: 0, dropped: 0 };
        windows.set(key, w);
        if (windows.size > 1000) windows.delete(windows.keys().next().value!);
      }
      if (w.count < burst) {
        w.count++;
        emit('warn', msg, fields);
        return true;
      }
      w.dropped++;
      suppressed.set(key, (suppressed.get(key) ?? 0) + 1);
      return false;
    },
  };
  return logger;
}
