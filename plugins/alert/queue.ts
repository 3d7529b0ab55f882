/**
 * A bounded, serial delivery queue for alert plugins: one delivery at a time, in order. When
 * full, the oldest waiting item is dropped and counted (a dead webhook must not grow memory
 * without end); the owner is told so it can warn.
 */
import { withTimeout } from '../../core/util/timeout.ts';

/** Options every queued alert plugin has (queue bound, stop drain); `doing` words the drain. */
export function queueOptionsSchema(doing: string) {
  return {
    queueSize: { type: 'integer', minimum: 1, maximum: 100_000, default: 100, description: 'alerts waiting at most; beyond it the oldest is dropped' },
    drainTimeoutMs: { type: 'integer', minimum: 0, maximum: 600_000, default: 1500, description: `on stop, time to ${doing} what is queued (keep below pluginTimeout)` },
  } as const;
}

export class SerialQueue<T> {
  private readonly items: T[] = [];
  private running = false;
  private idle: Array<() => void> = [];
  /** Items dropped because the queue was full. */
  dropped = 0;
  /** Items taken off the queue and run (delivered or given up on). */
  processed = 0;

  constructor(
    private readonly capacity: number,
    private readonly run: (item: T) => Promise<void>,
    private readonly onDrop: (item: T, droppedSoFar: number) => void = () => {},
  ) {}

  get size(): number {
    return this.items.length + (this.running ? 1 : 0);
  }

  push(item: T): void {
    if (this.items.length >= this.capacity) {
      const oldest = this.items.shift()!;
      this.dropped++;
      this.onDrop(oldest, this.dropped);
    }
    this.items.push(item);
    if (!this.running) void this.work();
  }

  /** Resolves true once everything queued is delivered, false after `timeoutMs`. */
  async drain(timeoutMs: number): Promise<boolean> {
    if (this.size === 0) return true;
    return withTimeout(new Promise<boolean>((r) => this.idle.push(() => r(true))), timeoutMs, { value: false });
  }

  /** Forgets what is still waiting (after a drain timed out); returns how many. */
  clear(): number {
    const n = this.items.length;
    this.items.length = 0;
    return n;
  }

  private async work(): Promise<void> {
    this.running = true;
    try {
      for (let item = this.items.shift(); item !== undefined; item = this.items.shift()) {
        try {
          await this.run(item);
        } catch {
          // `run` reports its own failures; the queue moves on.
        }
        this.processed++;
      }
    } finally {
      this.running = false;
      const waiters = this.idle;
      this.idle = [];
      for (const w of waiters) w();
    }
  }
}

/**
 * The wiring every damped, queued alert plugin shares: alert events go into the damper (which
 * feeds the queue); on stop, held alerts are flushed and the queue gets `drainTimeoutMs` to
 * empty, then what is left is dropped and counted in one warning.
 */
export function tapDampedQueue(
  core: import('../../core/plugin/hooks.ts').CoreLike,
  name: string,
  parts: { damper: { submit(e: import('../../core/plugin/hooks.ts').AlertEvent): void; flush(): void }; queue: Pick<SerialQueue<unknown>, 'drain' | 'clear'> },
  drainTimeoutMs: number,
  unfinished: (left: number) => [message: string, fields: Record<string, unknown>],
): void {
  core.hooks.alert.tap(name, (e) => parts.damper.submit(e));
  core.hooks.stop.tapPromise(name, async () => {
    parts.damper.flush();
    if (await parts.queue.drain(drainTimeoutMs)) return;
    const left = parts.queue.clear();
    if (left) core.logger.warn(...unfinished(left));
  });
}
