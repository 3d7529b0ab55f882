/**
 * The group's decision rule: what state every member shows for a backend, from the results of
 * the live members that check it (docs/operations.md, "Load balancer groups").
 *
 * - Results from members that are not live (heartbeat expired), from an older epoch of a member,
 *   or older than the freshness window are left out; so are UNKNOWN ones (a checker that has not
 *   finished its first check yet has nothing to say).
 * - Of the rest, the most available state wins: UP, then DEGRADED, DRAINING, MAINT, DOWN. So a
 *   backend is DOWN only when every live checker says DOWN: one checker that cannot reach it
 *   (its own network path) does not take it out of rotation while another one reaches it.
 *   Among results with the same state, the newest one gives the details (metrics, verdict, reason).
 * - No result left: the backend keeps the state it has (nobody has news, so nothing changes;
 *   this is what keeps a member's death from turning its backends DOWN).
 * - Each member's own admin state for a backend (operators, `setAdmin`) applies on top, as it
 *   does without a group: MAINT wins, DRAIN turns UP/DEGRADED/UNKNOWN into DRAINING.
 */
import type { AdminState, HealthState } from '../health/states.ts';

/** Lower is more available. */
export const AVAILABILITY: Readonly<Record<HealthState, number>> = { UP: 0, DEGRADED: 1, DRAINING: 2, MAINT: 3, DOWN: 4, UNKNOWN: 5 };

/** The winning result among candidates (`state`, `at`), or undefined when none counts. */
export function decide<R extends { readonly state: HealthState; readonly at: number }>(candidates: readonly R[]): R | undefined {
  let best: R | undefined;
  for (const c of candidates) {
    if (c.state === 'UNKNOWN') continue;
    if (!best || AVAILABILITY[c.state] < AVAILABILITY[best.state] || (c.state === best.state && c.at > best.at)) best = c;
  }
  return best;
}

/** The state shown: the group's state with this member's own admin state on top. */
export function withAdmin(state: HealthState, admin: AdminState): HealthState {
  if (admin === 'MAINT') return 'MAINT';
  if (admin === 'DRAIN' && (state === 'UP' || state === 'DEGRADED' || state === 'UNKNOWN')) return 'DRAINING';
  return state;
}
