/**
 * What every built-in balancer's plugin body shares: `picker()` makes a Picker for one pool
 * (LocalBalancer: the load balancer's PICK and the client's local picks), and one more Picker
 * serves the `pick` hook for callers that pass the pool each time (HookedPicker reads the pool
 * again when it comes as another array). `why` is the reason of the last hook pick
 * (PICK_RESPONSE `why`).
 */
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import { HookedPicker, type Picker } from '../../core/balance/picker.ts';

export abstract class BalancerBody<P extends Picker> {
  private hooked: HookedPicker<P> | undefined;
  /** Why the last hook pick chose its server. */
  why = '';

  constructor(private readonly tapName: string) {}

  /** A Picker of its own for one pool. */
  abstract picker(): P;

  /** One pick on the `pick` hook's path. */
  choose(servers: readonly BackendView[], now: number = Date.now()): BackendView | undefined {
    this.hooked ??= new HookedPicker(this.picker());
    const r = this.hooked.pick(servers, now);
    this.why = r?.why ?? '';
    return r?.server;
  }

  /** Forgets the hook's Picker: the next pick makes a new one (after what picker() reads has changed). */
  protected forgetHooked(): void {
    this.hooked = undefined;
  }

  apply(core: CoreLike): void {
    core.hooks.pick.tap(this.tapName, (req) => {
      const chosen = this.choose(req.servers, req.now);
      if (chosen) req.explain?.(this.why);
      return chosen;
    });
  }
}
