/**
 * Rate limits for the query port (docs/operations.md, "Query rate limits"): STATUS and PICK are
 * answered within a token bucket per connection and one for all connections together, so a
 * flood of queries cannot take the CPU the load balancer's own health checks need. A query over
 * the limit waits (in order, per connection) until both buckets have a token. On the query port
 * a connection has at most one query here (the session reads the next frame only after
 * answering: session.ts syncHold); `maxWaiting` stays as this class's own bound.
 */

/** A token bucket: `rate` tokens a second, at most `burst` saved up. */
export class TokenBucket {
  private tokens: number;
  private at: number;

  constructor(
    readonly rate: number,
    readonly burst: number,
    now = performance.now(),
  ) {
    this.tokens = burst;
    this.at = now;
  }

  private refill(now: number): void {
    if (now > this.at) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) / 1000) * this.rate);
      this.at = now;
    }
  }

  /** Whether a token is there now (without taking it). */
  has(now = performance.now()): boolean {
    this.refill(now);
    return this.tokens >= 1;
  }

  take(now = performance.now()): boolean {
    this.refill(now);
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Milliseconds until the next token. */
  waitMs(now = performance.now()): number {
    this.refill(now);
    return this.tokens >= 1 ? 0 : ((1 - this.tokens) / this.rate) * 1000;
  }
}

export interface QueryLimits {
  /** Queries a second per connection (0: unlimited). */
  perConnection: number;
  /** Queries a second over all connections (0: unlimited). */
  total: number;
  /** Queries that may wait per connection before it is closed. */
  maxWaiting?: number;
}

export interface LimitStats {
  /** Queries that had to wait for a token. */
  delayed: number;
  /** Connections closed for having too many queries waiting. */
  closed: number;
}

interface Conn {
  bucket: TokenBucket | undefined;
  queue: Array<() => void>;
}

export class QueryLimiter {
  private readonly conns = new Map<object, Conn>();
  private readonly total: TokenBucket | undefined;
  private timer: NodeJS.Timeout | undefined;
  readonly maxWaiting: number;
  readonly stats: LimitStats = { delayed: 0, closed: 0 };

  constructor(readonly limits: QueryLimits) {
    this.total = limits.total > 0 ? new TokenBucket(limits.total, limits.total) : undefined;
    this.maxWaiting = limits.maxWaiting ?? 32;
  }

  private conn(key: object): Conn {
    let c = this.conns.get(key);
    if (!c) {
      const r = this.limits.perConnection;
      c = { bucket: r > 0 ? new TokenBucket(r, r) : undefined, queue: [] };
      this.conns.set(key, c);
    }
    return c;
  }

  /** No limit at all (both rates 0): queries need not go through `submit`. */
  get unlimited(): boolean {
    return this.limits.perConnection <= 0 && this.total === undefined;
  }

  /**
   * Runs `answer` now when both buckets allow it, else queues it for later. Returns false (and
   * runs nothing) when the connection already has `maxWaiting` queries waiting: close it.
   */
  submit(key: object, answer: () => void): boolean {
    const c = this.conn(key);
    const now = performance.now();
    if (c.queue.length === 0 && this.ready(c, now)) {
      this.takeFrom(c, now);
      answer();
      return true;
    }
    if (c.queue.length >= this.maxWaiting) {
      this.stats.closed++;
      this.forget(key);
      return false;
    }
    this.stats.delayed++;
    c.queue.push(answer);
    this.schedule();
    return true;
  }

  /** The connection is gone: its waiting queries are dropped. */
  forget(key: object): void {
    this.conns.delete(key);
  }

  private ready(c: Conn, now: number): boolean {
    return (c.bucket?.has(now) ?? true) && (this.total?.has(now) ?? true);
  }

  private takeFrom(c: Conn, now: number): void {
    c.bucket?.take(now);
    this.total?.take(now);
  }

  private schedule(): void {
    if (this.timer) return;
    let wait = Infinity;
    const now = performance.now();
    for (const c of this.conns.values()) {
      if (c.queue.length === 0) continue;
      wait = Math.min(wait, Math.max(c.bucket?.waitMs(now) ?? 0, this.total?.waitMs(now) ?? 0));
    }
    if (wait === Infinity) return;
    // At least a few ms between rounds: waiting queries are answered in batches, not one timer each.
    this.timer = setTimeout(() => this.drain(), Math.max(5, Math.ceil(wait)));
    this.timer.unref();
  }

  /** Answers waiting queries, one per connection per pass (round robin), while tokens last. */
  private drain(): void {
    this.timer = undefined;
    const now = performance.now();
    let progress = true;
    while (progress) {
      progress = false;
      for (const c of this.conns.values()) {
        if (c.queue.length === 0 || !this.ready(c, now)) continue;
        this.takeFrom(c, now);
        c.queue.shift()!();
        progress = true;
      }
      if (this.total && !this.total.has(now)) break;
    }
    this.schedule();
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.conns.clear();
  }
}
