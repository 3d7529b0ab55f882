/**
 * A background sampler for metrics plugins. Each source is read on its own interval with its own
 * timeout and its last good values are cached with the time they were read, so a `collect` tap
 * only copies the cache: no system call ever runs on a health check's path. A source that throws
 * or hangs loses only its own metrics until it answers again, and a hung read is never started a
 * second time (a stuck `df` must not pile up child processes).
 */
import { errorText } from '../../core/errors.ts';
import { withTimeout } from '../../core/util/timeout.ts';

export type Values = Record<string, number>;

export interface Source {
  name: string;
  intervalMs: number;
  timeoutMs: number;
  /** One reading: metric name -> value. May return {} when it has nothing yet (a rate's first reading). */
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
  timer: NodeJS.Timeout | undefined;
}

export class Sampler {
  private readonly states: State[];
  private running = false;

  /** `onError(source, message)` is told of each failed or timed-out read. */
  constructor(
    sources: Source[],
    private readonly onError: (source: string, message: string) => void = () => {},
  ) {
    this.states = sources.map((source) => ({ source, name: source.name, values: {}, sampledAt: 0, reads: 0, failures: 0, lastError: null, inFlight: false, generation: 0, timer: undefined }));
  }

  /**
   * Reads every source once (waiting at most `firstWaitMs` in all, so a hung source cannot hold
   * up start-up) and then keeps each one fresh on its own interval.
   */
  async start(firstWaitMs: number): Promise<void> {
    if (this.running) return;
    this.running = true;
    await withTimeout(Promise.all(this.states.map((s) => this.readOnce(s))), firstWaitMs, { value: undefined });
    if (!this.running) return; // stopped while starting
    for (const s of this.states) {
      s.timer = setInterval(() => void this.readOnce(s), s.source.intervalMs);
      s.timer.unref();
    }
  }

  stop(): void {
    this.running = false;
    for (const s of this.states) {
      clearInterval(s.timer);
      s.timer = undefined;
      s.generation++;
    }
  }

  /**
   * Calls `fn` for every cached value that is still fresh: read within two intervals plus the
   * timeout (older values would misstate the report's age, so they are left out).
   */
  forEach(fn: (name: string, value: number, sampledAt: number, source: string) => void, now = Date.now()): void {
    for (const s of this.states) {
      if (s.sampledAt === 0 || now - s.sampledAt > 2 * s.source.intervalMs + s.source.timeoutMs) continue;
      for (const [k, v] of Object.entries(s.values)) fn(k, v, s.sampledAt, s.name);
    }
  }

  status(): SourceStatus[] {
    return this.states.map(({ name, values, sampledAt, reads, failures, lastError, inFlight }) => ({ name, values: { ...values }, sampledAt, reads, failures, lastError, inFlight }));
  }

  /** One bounded read of one source; never overlaps a read of the same source still running. */
  private async readOnce(s: State): Promise<void> {
    if (s.inFlight) return;
    s.inFlight = true;
    s.reads++;
    const gen = s.generation;
    const reading = Promise.resolve().then(() => s.source.read());
    // The flag follows the real read, not the timeout: a hung read blocks only its own source.
    void reading.then(
      () => (s.inFlight = false),
      () => (s.inFlight = false),
    );
    try {
      const values = await withTimeout(reading, s.source.timeoutMs, () => new Error(`timed out after ${s.source.timeoutMs} ms`));
      if (gen !== s.generation) return;
      const clean: Values = {};
      for (const [k, v] of Object.entries(values)) if (Number.isFinite(v)) clean[k] = v;
      s.values = clean;
      s.sampledAt = Date.now();
      s.lastError = null;
    } catch (e) {
      if (gen !== s.generation) return;
      s.failures++;
      s.lastError = errorText(e);
      // Drop the source's metrics rather than report stale numbers as current.
      s.values = {};
      s.sampledAt = 0;
      this.onError(s.name, s.lastError);
    }
  }
}
