/**
 * The `sync` hook's dispatcher: the load balancer starts one when some plugin taps `sync`. It
 * listens to `checked` and `transition` (and sweeps once a second for changes made outside a
 * check: an operator's admin state or weight), compares each backend with what it last sent,
 * and calls `sync` once per event-loop tick with the whole view and what changed. The taps get
 * snapshots, so a plugin that does its I/O later reads the values of that moment. The query
 * port's WATCH sessions (core/roles/watch-hub.ts) read the same updates through `listen`.
 */
import type { BackendView, Hooks, SyncUpdate } from './hooks.ts';

/** The fields of a backend a snapshot keeps (those of the shared contract that are present). */
const FIELDS = ['address', 'state', 'since', 'metrics', 'reportedAt', 'ageMs', 'weight', 'latencyMs', 'service', 'verdict', 'reason', 'agentAdmin', 'adminState', 'agentWeight', 'configWeight'] as const;

/**
 * A frozen copy of `b`'s view fields (metrics copied too); getters (the effective `weight`) are
 * read. `agentWeight` (the agent's weight in percent) and `configWeight` are kept when the
 * backend record has them, for sync plugins that scale a proxy's own weights.
 */
export function snapshot(b: BackendView): BackendView {
  const out: Record<string, unknown> = {};
  for (const k of FIELDS) {
    const v = (b as unknown as Record<string, unknown>)[k];
    if (v === undefined) continue;
    out[k] = k === 'metrics' && v && typeof v === 'object' ? Object.freeze({ ...(v as object) }) : v;
  }
  return Object.freeze(out) as unknown as BackendView;
}

/** What makes two snapshots of one backend "the same" for sync plugins. */
function signature(b: BackendView): string {
  return JSON.stringify(FIELDS.filter((k) => k !== 'latencyMs' && k !== 'reportedAt' && k !== 'ageMs').map((k) => (b as unknown as Record<string, unknown>)[k] ?? null));
}

export class SyncDispatcher {
  private readonly last = new Map<string, string>();
  private pending = false;
  private started = false;
  private stopped = false;
  private sweep: NodeJS.Timeout | undefined;
  /** Calls of the `sync` hook so far. */
  calls = 0;
  /** The last update made (its `view` is the whole view at that moment). */
  latest: SyncUpdate | undefined;
  private readonly listeners = new Set<(u: SyncUpdate) => void>();

  constructor(
    private readonly hooks: Hooks,
    private readonly source: () => readonly BackendView[],
    private readonly sweepMs = 1000,
  ) {}

  /** Taps `checked`/`transition`, sends the first update on the next tick, starts the sweep. */
  start(): void {
    if (this.started) return;
    this.started = true;
    const poke = () => this.schedule();
    this.hooks.checked.tap('sync-dispatcher', poke);
    this.hooks.transition.tap('sync-dispatcher', poke);
    this.schedule();
    this.sweep = setInterval(poke, this.sweepMs);
    this.sweep.unref();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.sweep);
    this.listeners.clear();
  }

  /**
   * Calls `fn` with every update after the `sync` taps (starting the dispatcher if need be).
   * Returns the function that stops it. `latest` holds the view as of the last update.
   */
  listen(fn: (u: SyncUpdate) => void): () => void {
    this.listeners.add(fn);
    this.start();
    return () => this.listeners.delete(fn);
  }

  /** Asks for a flush on the next tick (many pokes in one tick make one call). */
  schedule(): void {
    if (this.pending || this.stopped) return;
    this.pending = true;
    setImmediate(() => {
      this.pending = false;
      if (!this.stopped) this.flush();
    });
  }

  /** Compares the view with the last call's and calls `sync` when anything changed (always the first time). */
  flush(): void {
    const initial = this.calls === 0;
    const view = this.source().map(snapshot);
    const changed: BackendView[] = [];
    const seen = new Set<string>();
    for (const b of view) {
      seen.add(b.address);
      const sig = signature(b);
      if (this.last.get(b.address) !== sig) {
        this.last.set(b.address, sig);
        changed.push(b);
      }
    }
    const removed: string[] = [];
    for (const a of this.last.keys()) {
      if (!seen.has(a)) {
        removed.push(a);
        this.last.delete(a);
      }
    }
    if (!initial && changed.length === 0 && removed.length === 0) return;
    this.calls++;
    const update: SyncUpdate = Object.freeze({ view: Object.freeze(view), changed: Object.freeze(changed), removed: Object.freeze(removed), initial, at: Date.now() });
    this.latest = update;
    this.hooks.sync.call(update);
    for (const fn of this.listeners) fn(update);
  }
}
