/**
 * What every benchmark section shares: the mode (quick or full), how long windows last, the
 * log, and small helpers for free ports and bounded waits.
 */
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';

export interface Ctx {
  full: boolean;
  /** Seconds of each CPU measurement window. */
  window: number;
  /**
   * Seconds to let a system settle after it is up, before measuring. 5 in both modes since
   * 2026-11-30: with 1.5 the window right after 1000 backends came UP still held start-up's tail
   * (N = 1000 push, same tree, alternated: 99-100 us per report after 1.5 s, 92 after 8 s, 84-87
   * over 15-s windows; 0.37-0.39 datagrams sent per report instead of 0.33-0.35). HAProxy's cells
   * wait the same.
   */
  settle: number;
  /** Runs per detection scenario. */
  runs: number;
  log(line: string): void;
}

export function makeCtx(full: boolean, log: (s: string) => void): Ctx {
  return full ? { full, window: 15, settle: 5, runs: 10, log } : { full, window: 5, settle: 5, runs: 5, log };
}

/** A UDP port on 127.0.0.1 that was free a moment ago. */
export async function freeUdpPort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((r, j) => {
    s.once('error', j);
    s.bind(0, '127.0.0.1', () => r());
  });
  const { port } = s.address();
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freeTcpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** Polls `fn` every `everyMs` until it returns a value or `timeoutMs` passes (then undefined). */
export async function until<T>(fn: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs: number, everyMs = 50): Promise<T | undefined> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) return undefined;
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export const round = (v: number, digits = 1): number => Math.round(v * 10 ** digits) / 10 ** digits;
