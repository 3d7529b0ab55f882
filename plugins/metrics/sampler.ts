/**
 * A background sampler for metrics plugins. Each source is read on its own interval and its last
 * good values are cached with the time they were read, so a `collect` tap only copies the cache:
 * no system call ever runs on a health check's path. Sources with the same interval share one
 * timer, the process's shared tick of that period (core/util/tick.ts): the agent's own sample
 * joins it after them, so reads and sample take one wake. A source may answer synchronously (a /proc read: applied at once, no promise, no timer)
 * or with a promise, which is bounded by the source's timeout. A source that throws or hangs
 * loses only its own metrics until it answers again, and a hung read is never started a second
 * time (a stuck disk must not pile up pending reads).
 */
import { errorText } from '../../core/errors.ts';
import { withTimeout } from '../../core/util/timeout.ts';
import { every, type Tick } from '../../core/util/tick.ts';

export type Values = Record<string, number>;

export interface Source {
  name: string;
  intervalMs: number;
  timeoutMs: number;
  /**
   * One reading: metric name -> value. May return {} when it has nothing yet (a rate's first
   * reading). A synchronous answer cannot be interrupted, so only reads that cannot hang (procfs)
   * should be synchronous; `timeoutMs` bounds the asynchronous ones.
   */
  read(): Promise<Values> | Values;
}

export interface SourceStatus {
  name: string;
  values: Values;
  /** Epoch ms when the cached values were read (0: never). */
  sampledAt: number;
  reads: number;
  failures: number;
  lastError: string | null;
  inFlight: boolean;
}

interface State extends SourceStatus {
  source: Source;
  /** Bumped when a read is abandoned (timeout, stop), so its late answer is ignored. */
  generation: number;
}

export class Sampler {
  private readonly states: State[];
  private ticks: Tick[] = [];
  private running = false;

  /** `onError(source, message)` is told of each failed or timed-out read. */
  constructor(
    sources: Source[],
    private readonly onError: (source: string, message: string) => void = () => {},
  ) {
    this.states = sources.map((source) => ({ source, name: source.name, values: {}, sampledAt: 0, reads: 0, failures: 0, lastError: null, inFlight: false, generation: 0 }));
  }

  /**
   * Reads every source once (waiting at most `firstWaitMs` in all, so a hung source cannot hold
   * up start-up) and then keeps each one fresh on its own interval.
   */
  async start(firstWaitMs: number): Promise<void> {
    if (this.running) return;
    this.running = true;
    const pending = this.states.map((s) => this.readOnce(s)).filter((p) => p !== undefined);
    if (pending.length > 0) await withTimeout(Promise.all(pending), firstWaitMs, { value: undefined });
    if (!this.running) return; // stopped while starting
    const byInterval = new Map<number, State[]>();
    for (const s of this.states) byInterval.set(s.source.intervalMs, [...(byInterval.get(s.source.intervalMs) ?? []), s]);
    for (const [ms, group] of byInterval) {
      this.ticks.push(
        every(ms, () => {
          for (const s of group) void this.readOnce(s);
        }),
      );
    }
  }

  stop(): void {
    this.running = false;
    for (const t of this.ticks) t.stop();
    this.ticks = [];
    for (const s of this.states) s.generation++;
  }

  /**
   * Calls `fn` for every cached value that is still fresh: read within two intervals plus the
   * timeout (older values would misstate the report's age, so they are left out).
   */
  forEach(fn: (name: string, value: number, sampledAt: number, source: string) => void, now = Date.now()): void {
    for (const s of this.states) {
      if (s.sampledAt === 0 || now - s.sampledAt > 2 * s.source.intervalMs + s.source.timeoutMs) continue;
      for (const k in s.values) fn(k, s.values[k]!, s.sampledAt, s.name);
    }
  }

  status(): SourceStatus[] {
    return this.states.map(({ name, values, sampledAt, reads, failures, lastError, inFlight }) => ({ name, values: { ...values }, sampledAt, reads, failures, lastError, inFlight }));
  }

  /**
   * One read of one source; never overlaps a read of the same source still running. A
   * synchronous answer is stored at once (returns undefined); a promise is bounded by the
   * source's timeout (returns the promise of its outcome).
   */
  private readOnce(s: State): Promise<void> | undefined {
    if (s.inFlight) return undefined;
    s.reads++;
    let answer: Promise<Values> | Values;
    try {
      answer = s.source.read();
    } catch (e) {
      this.failed(s, e);
      return undefined;
    }
    if (!isPromiseLike(answer)) {
      this.store(s, answer);
      return undefined;
    }
    s.inFlight = true;
    const gen = s.generation;
    const reading = Promise.resolve(answer);
    // The flag follows the real read, not the timeout: a hung read blocks only its own source.
    void reading.then(
      () => (s.inFlight = false),
      () => (s.inFlight = false),
    );
    return withTimeout(reading, s.source.timeoutMs, () => new Error(`timed out after ${s.source.timeoutMs} ms`)).then(
      (values) => {
        if (gen === s.generation) this.store(s, values);
      },
      (e: unknown) => {
        if (gen === s.generation) this.failed(s, e);
      },
    );
  }

  private store(s: State, values: Values): void {
    const clean: Values = {};
    for (const k in values) {
      const v = values[k]!;
      if (Number.isFinite(v)) clean[k] = v;
    }
    s.values = clean;
    s.sampledAt = Date.now();
    s.lastError = null;
  }

  private failed(s: State, e: unknown): void {
    s.failures++;
    s.lastError = errorText(e);
    // Drop the source's metrics rather than report stale numbers as current.
    s.values = {};
    s.sampledAt = 0;
    this.onError(s.name, s.lastError);
  }
}

function isPromiseLike(x: unknown): x is PromiseLike<Values> {
  return typeof (x as PromiseLike<Values> | null)?.then === 'function';
}
