/**
 * Earliest deadline first over weighted entries: the weighted rotation's O(log N) form
 * (weighted-round-robin with reported or fractional weights) and slow start's mix.
 */
import { SlotHeap } from './heap.ts';

/**
 * Earliest-deadline-first over weighted entries: entry i is due every 1/w_i of virtual time and
 * the earliest due one is picked (ties: the lower index), so over any stretch each entry gets
 * its weight's share, interleaved. Weights may change between picks (`reweigh`): deadlines
 * carry on from the current virtual time. O(log n) per pick.
 */
export class Edf {
  private w: number[] = [];
  private due: number[] = [];
  /** Entries set aside (`park`): kept out of the rotation, their weight and place remembered. */
  private parked: boolean[] = [];
  private vt = 0;
  private readonly heap = new SlotHeap((a, b) => this.due[a]! < this.due[b]! || (this.due[a] === this.due[b] && a < b));

  /** Starts over with `weights` (each > 0 to be picked; 0 = never). */
  reset(weights: readonly number[]): void {
    this.w = [...weights];
    this.parked = this.w.map(() => false);
    this.vt = 0;
    this.due = this.w.map((x) => (x > 0 ? 1 / (2 * x) : Infinity));
    this.heap.reset(this.w.map((_, i) => i).filter((i) => this.w[i]! > 0), this.w.length);
  }

  /** New weights for the same entries, keeping the rotation's place. */
  reweigh(weights: readonly number[]): void {
    if (weights.length !== this.w.length) return this.reset(weights);
    for (let i = 0; i < weights.length; i++) {
      const x = weights[i]!;
      if (x === this.w[i]) continue;
      this.w[i] = x;
      this.due[i] = x > 0 ? this.vt + 1 / (2 * x) : Infinity;
      if (this.parked[i]) continue;
      if (x > 0) this.heap.push(i);
      else if (this.heap.has(i)) this.heap.fix(i);
    }
  }

  get size(): number {
    return this.w.length;
  }

  weight(i: number): number {
    return this.w[i] ?? 0;
  }

  /** The next entry (-1 when none has a weight). */
  next(): number {
    const i = this.heap.peek();
    if (i < 0 || !(this.w[i]! > 0)) return -1;
    this.vt = this.due[i]!;
    this.due[i] = this.vt + 1 / this.w[i]!;
    this.heap.fix(i);
    return i;
  }

  /** Takes entry `i` out of the rotation until `unpark` (a share cap). */
  park(i: number): void {
    this.parked[i] = true;
    this.heap.remove(i);
  }

  /** Puts entry `i` back; it does not catch up on the turns it missed. */
  unpark(i: number): void {
    if (!this.parked[i]) return;
    this.parked[i] = false;
    if (!(this.w[i]! > 0)) return;
    this.due[i] = Math.max(this.due[i]!, this.vt + 1 / (2 * this.w[i]!));
    this.heap.push(i);
  }
}
