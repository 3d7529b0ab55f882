/**
 * The maintained-state contract between LocalBalancer and a balancer plugin. A plugin opts in by
 * offering `picker()`: a new Picker per pool, told of every change (`update`, may cost O(N)) and
 * asked for picks (`pick`, O(1) or O(log N) from what `update` built). A plugin without it is
 * asked through its `pick` hook tap with the whole pool every time (O(N) or worse), as before
 * (docs/plugins.md, "Maintained pickers").
 */
import type { BackendView } from '../plugin/hooks.ts';
import type { QhcpPlugin } from '../plugin/loader.ts';

export interface PickResult {
  server: BackendView;
  /** Why this server (PICK_RESPONSE `why`), e.g. "lowest load 0.12". */
  why: string;
}

export interface Picker {
  /**
   * The servers that may be picked now, in configuration order (UP ones, or as the DEGRADED
   * policy and panic mode say). Called on every change of the view (state, weight, report);
   * the objects may be live records whose fields change later, so read what is needed here.
   */
  update(servers: readonly BackendView[], now: number): void;
  /** One server of the last `update`'s, or undefined when there is none. */
  pick(key: string | undefined, now: number): PickResult | undefined;
}

/** A balancer plugin that keeps its state between picks. */
export interface PickerPlugin extends QhcpPlugin {
  picker(): Picker;
}

export function hasPicker(p: QhcpPlugin): p is PickerPlugin {
  return typeof (p as Partial<PickerPlugin>).picker === 'function';
}

/**
 * The `pick` hook's path over a maintained picker (built-in plugins' `choose`): the pool is read
 * again (O(N)) when the caller passes another array than last time, else the pick is the
 * picker's O(1) / O(log N) one. Callers pass a new array when the pool changed (LoadBalancer
 * before issue 16, tcp-proxy's candidates, tests); reports going stale are noticed either way.
 */
export class HookedPicker<P extends Picker = Picker> {
  private seen: readonly BackendView[] | undefined;

  constructor(readonly picker: P) {}

  pick(servers: readonly BackendView[], now: number): PickResult | undefined {
    if (servers !== this.seen) {
      this.picker.update(servers, now);
      this.seen = servers;
    }
    return this.picker.pick(undefined, now);
  }
}

/**
 * A pick whose `why` is worded only when read: formatting numbers costs more than a pick, and
 * most callers (a client's pick()) never read it.
 */
export class Picked implements PickResult {
  constructor(
    readonly server: BackendView,
    private readonly words: (a: number, b: number) => string,
    private readonly a = 0,
    private readonly b = 0,
  ) {}

  get why(): string {
    return this.words(this.a, this.b);
  }
}

/** A number rounded to 3 decimals for `why` texts. */
export function r3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
