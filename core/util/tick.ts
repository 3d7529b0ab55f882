/**
 * Fixed-rate ticks shared by everything in the process that runs on the same period: the
 * callbacks of one period run one after another in one timer callback, so one event-loop wake
 * serves them all. An agent's metric sources, its sample and the reports that carry it all run
 * every second: on their own timers they woke the process three or four times a second, and
 * each wake from idle costs about 150 us of CPU on a small VM (docs/benchmarks.md, "Agent").
 *
 * Callbacks run in the order they joined, so a producer that joins first (a metrics plugin's
 * sources, at the `start` hook) runs before its consumer (the agent's sample). The schedule is
 * fixed-rate (due times `ms` apart: a late wake does not push later ticks back; after a stall
 * longer than `ms`, the next tick is `ms` from then, no burst of catch-up ticks). A callback
 * that joins a period already ticking first runs at that period's next tick, within `ms`.
 * The timers do not keep the process alive.
 */

/** One registration; `stop()` removes it (the period's timer goes when its last callback does). */
export interface Tick {
  stop(): void;
}

interface Period {
  readonly ms: number;
  /** Replaced, never mutated, so a tick in progress iterates a stable list. */
  fns: ReadonlyArray<() => void>;
  due: number;
  timer: NodeJS.Timeout | undefined;
}

const periods = new Map<number, Period>();

/** When the tick after one due at `due` is due, seen at `now` (fixed rate; one period from now after a stall). */
export function nextDue(due: number, now: number, ms: number): number {
  const next = due + ms;
  return next > now ? next : now + ms;
}

function arm(p: Period): void {
  p.timer = setTimeout(() => fire(p), Math.max(1, p.due - performance.now()));
  p.timer.unref();
}

function fire(p: Period): void {
  p.due = nextDue(p.due, performance.now(), p.ms);
  arm(p);
  let failure: { error: unknown } | undefined;
  for (const fn of p.fns) {
    try {
      fn();
    } catch (e) {
      // One callback's throw does not skip the others; it is still an uncaught error.
      failure ??= { error: e };
    }
  }
  if (failure) {
    const { error } = failure;
    process.nextTick(() => {
      throw error;
    });
  }
}

/** Runs `fn` every `ms` (rounded to a whole ms, at least 1) on the period's shared fixed-rate timer. */
export function every(ms: number, fn: () => void): Tick {
  if (!Number.isFinite(ms)) throw new RangeError(`tick period must be a finite number of ms, got ${ms}`);
  ms = Math.max(1, Math.round(ms));
  let p = periods.get(ms);
  if (!p) {
    p = { ms, fns: [], due: performance.now() + ms, timer: undefined };
    periods.set(ms, p);
    arm(p);
  }
  const period = p;
  period.fns = [...period.fns, fn];
  let stopped = false;
  return {
    stop() {
      if (stopped) return;
      stopped = true;
      const i = period.fns.indexOf(fn);
      if (i >= 0) period.fns = [...period.fns.slice(0, i), ...period.fns.slice(i + 1)];
      if (period.fns.length === 0) {
        clearTimeout(period.timer);
        periods.delete(period.ms);
      }
    },
  };
}
