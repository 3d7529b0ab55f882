/**
 * One timer for many deadlines: an indexed binary min-heap of deadlines and a single
 * `setTimeout` armed for the earliest one. Moving a deadline updates the entry in place (no
 * allocation per packet or per check); entries leave the heap when they have no deadline. The
 * QUIC driver keeps every connection's deadline in one (core/transport/driver.ts), the checker
 * every backend's next step (core/health/checker.ts).
 */

/** Something with a deadline (ms, `performance.now()` clock). `heapIndex` is owned by the heap. */
export interface Timed {
  deadline: number;
  heapIndex: number;
}

export class DeadlineHeap<T extends Timed> {
  private readonly items: T[] = [];
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;

  /** `fire(now)` runs when the earliest deadline is due; it must move or remove the due entries. */
  constructor(private readonly fire: (now: number) => void) {}

  get size(): number {
    return this.items.length;
  }

  peek(): T | undefined {
    return this.items[0];
  }

  /** Sets (or clears, with Infinity) `item`'s deadline and re-arms the timer when needed. */
  set(item: T, deadline: number): void {
    if (deadline === Infinity) {
      this.remove(item);
      return;
    }
    const old = item.deadline;
    item.deadline = deadline;
    if (item.heapIndex < 0) {
      item.heapIndex = this.items.length;
      this.items.push(item);
      this.up(item.heapIndex);
    } else if (deadline < old) this.up(item.heapIndex);
    else if (deadline > old) this.down(item.heapIndex);
    this.arm();
  }

  remove(item: T): void {
    const i = item.heapIndex;
    item.deadline = Infinity;
    if (i < 0) return;
    item.heapIndex = -1;
    const last = this.items.pop()!;
    if (last !== item) {
      this.items[i] = last;
      last.heapIndex = i;
      this.up(i);
      this.down(last.heapIndex);
    }
    if (this.items.length === 0) this.disarm();
  }

  /** Re-arms the one timer for the earliest deadline (called after every batch of changes). */
  arm(): void {
    const top = this.items[0];
    if (!top) return this.disarm();
    // A timer already due no later than the earliest deadline stays: the common case (a
    // deadline pushed later) does not touch the timer; firing early just re-arms.
    if (this.timer && this.timerAt <= top.deadline) return;
    this.disarm();
    const delay = Math.max(0, top.deadline - performance.now());
    this.timerAt = top.deadline;
    this.timer = setTimeout(this.onTimer, Math.ceil(delay));
    // What owns the heap (a socket, a listener) keeps the process alive, not its timer.
    this.timer.unref();
  }

  disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = Infinity;
  }

  private readonly onTimer = (): void => {
    this.timer = undefined;
    this.timerAt = Infinity;
    this.fire(performance.now());
    this.arm();
  };

  private up(i: number): void {
    const items = this.items;
    const item = items[i]!;
    while (i > 0) {
      const p = (i - 1) >> 1;
      const parent = items[p]!;
      if (parent.deadline <= item.deadline) break;
      items[i] = parent;
      parent.heapIndex = i;
      i = p;
    }
    items[i] = item;
    item.heapIndex = i;
  }

  private down(i: number): void {
    const items = this.items;
    const n = items.length;
    const item = items[i]!;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && items[r]!.deadline < items[l]!.deadline ? r : l;
      const child = items[c]!;
      if (child.deadline >= item.deadline) break;
      items[i] = child;
      child.heapIndex = i;
      i = c;
    }
    items[i] = item;
    item.heapIndex = i;
  }
}
