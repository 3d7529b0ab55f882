/**
 * A binary min-heap over the slots 0..n-1 of a pool (a slot is a backend's position), ordered by
 * a comparison the owner supplies and able to move one slot after its key changed (`fix`) in
 * O(log n). The balancers keep their pick order in one (least-loaded, least-connections, the
 * weighted rotation's deadlines, slow start's mix). Hand-written rather than a dependency: the
 * common npm heaps (heap-js, tinyqueue, @datastructures-js/priority-queue) hold values, not
 * slots, and cannot re-position one entry whose key changed without a linear search.
 */
export class SlotHeap {
  /** heap[i] = slot; at[slot] = i (or -1 when the slot is not in the heap). */
  private heap: number[] = [];
  private at: number[] = [];

  /** `less(a, b)`: whether slot a comes before slot b. */
  constructor(private readonly less: (a: number, b: number) => boolean) {}

  get size(): number {
    return this.heap.length;
  }

  /** Rebuilds the heap over `slots` (O(n)). */
  reset(slots: Iterable<number>, capacity: number): void {
    this.heap = [...slots];
    this.at = new Array<number>(capacity).fill(-1);
    this.heap.forEach((s, i) => (this.at[s] = i));
    for (let i = (this.heap.length >> 1) - 1; i >= 0; i--) this.down(i);
  }

  /** The first slot, or -1 when empty. */
  peek(): number {
    return this.heap.length > 0 ? this.heap[0]! : -1;
  }

  has(slot: number): boolean {
    return (this.at[slot] ?? -1) >= 0;
  }

  push(slot: number): void {
    if (this.has(slot)) return this.fix(slot);
    this.at[slot] = this.heap.length;
    this.heap.push(slot);
    this.up(this.heap.length - 1);
  }

  /** Removes and returns the first slot (-1 when empty). */
  pop(): number {
    const n = this.heap.length;
    if (n === 0) return -1;
    const top = this.heap[0]!;
    const last = this.heap.pop()!;
    this.at[top] = -1;
    if (n > 1) {
      this.heap[0] = last;
      this.at[last] = 0;
      this.down(0);
    }
    return top;
  }

  /** Takes `slot` out (no-op when it is not in). */
  remove(slot: number): void {
    const i = this.at[slot] ?? -1;
    if (i < 0) return;
    const last = this.heap.pop()!;
    this.at[slot] = -1;
    if (last === slot) return;
    this.heap[i] = last;
    this.at[last] = i;
    this.up(i);
    this.down(this.at[last]!);
  }

  /** Restores the order after `slot`'s key changed. */
  fix(slot: number): void {
    const i = this.at[slot] ?? -1;
    if (i < 0) return;
    this.up(i);
    this.down(this.at[slot]!);
  }

  private up(i: number): void {
    const h = this.heap;
    const s = h[i]!;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(s, h[p]!)) break;
      h[i] = h[p]!;
      this.at[h[i]!] = i;
      i = p;
    }
    h[i] = s;
    this.at[s] = i;
  }

  private down(i: number): void {
    const h = this.heap;
    const n = h.length;
    const s = h[i]!;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && this.less(h[r]!, h[l]!) ? r : l;
      if (!this.less(h[c]!, s)) break;
      h[i] = h[c]!;
      this.at[h[i]!] = i;
      i = c;
    }
    h[i] = s;
    this.at[s] = i;
  }
}
