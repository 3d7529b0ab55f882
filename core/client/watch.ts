/**
 * `watch()`: a live copy of a load balancer's view in the client's own process, and picks made
 * from it locally by the same balancer plugins the load balancer runs (core/balance/local.ts).
 *
 *   import { watch } from 'qhcp/client';
 *   const lb = await watch({ addresses: ['10.0.0.1:4242', '10.0.0.2:4242'], service: 'web', balancer: 'least-loaded' });
 *   lb.on('change', (c) => console.log(`v${c.version}: ${c.changed.length} changed`));
 *   const hit = lb.pick(userId);          // { server: { address: '10.0.1.7:8080/web', ... }, why } or undefined
 *   ...
 *   await lb.close();
 *
 * One QUIC session (HELLO role "query", then WATCH) streams a full view and then versioned
 * deltas (docs/protocol.md, "WATCH"). When the session ends the view keeps serving picks; the
 * client reconnects with backoff, trying the next address of the list each time, and marks the
 * view `stale` (event 'stale') once it has been without a load balancer for `staleAfterMs`.
 */
import { EventEmitter } from 'node:events';
import { ProtocolError, LocalError, errorText } from '../errors.ts';
import type { Message, WatchMember } from '../protocol/messages.ts';
import type { Session, SessionEnd } from '../protocol/session.ts';
import type { BackendView } from '../plugin/hooks.ts';
import type { QhcpPlugin } from '../plugin/loader.ts';
import type { DegradedPolicy } from '../health/states.ts';
import { Core } from '../roles/core.ts';
import { buildConfig } from '../config/config.ts';
import { createLogger, type Logger } from '../util/log.ts';
import { parseAddress } from '../util/address.ts';
import { LocalBalancer, type PickResult, type SlowStartOptions } from '../balance/local.ts';
import { openQuerySession, type QueryOptions } from './query.ts';

/** Default query port of a load balancer (docs/protocol.md, "Transport"). */
const DEFAULT_QUERY_PORT = 4242;

/** A backend of the view: the WATCH_UPDATE member, readable as the BackendView balancers take. */
export type WatchedBackend = Readonly<WatchMember> & BackendView;

export interface WatchOptions extends Omit<QueryOptions, 'host' | 'port' | 'token' | 'idleTimeoutMs' | 'keepAliveMs'> {
  /** Load balancer query addresses (`host:port`, port 4242 by default), tried in order. */
  addresses?: ReadonlyArray<string | { host: string; port: number }>;
  /** A single load balancer (when `addresses` is not given). */
  host?: string;
  port?: number;
  /** A HELLO token, or a function giving a fresh one for each connection. */
  token?: string | (() => string | Promise<string>);
  /** Only backends that name this service (`host:4243/web`). */
  service?: string;
  /** Only backends whose address matches this pattern (`*`: any run of characters). */
  match?: string;
  /** The balancer plugin for `pick()`: a built-in name (default `round-robin`), a module path, or an instance. */
  balancer?: string | QhcpPlugin;
  /** Its options (checked against its schema). */
  balancerOptions?: Record<string, unknown>;
  /** Slow start, as the load balancer's balancers take it (core/balance/options.ts). */
  slowStart?: Partial<SlowStartOptions>;
  /** Panic threshold in percent (0: off); default as in the load balancer. */
  panicThreshold?: number;
  /** How DEGRADED backends are picked (as the config's `degraded`), default fallback. */
  degraded?: DegradedPolicy;
  /**
   * A load balancer that has gone silent (crashed, unreachable) is given up after this long
   * (QUIC idle timeout, with PINGs at a third of it): default 5000 ms.
   */
  idleTimeoutMs?: number;
  /** Without a load balancer for this long, the view is marked stale (default 5000 ms). */
  staleAfterMs?: number;
  /** Backoff between connection attempts: from `minMs`, doubling, at most `maxMs` (default 100 / 5000 ms). */
  backoff?: { minMs?: number; maxMs?: number };
  /** `watch()` rejects when no full view came within this (default 10000 ms); the view object is closed then. */
  readyTimeoutMs?: number;
  logger?: Logger;
}

/** A 'change' event: what one WATCH_UPDATE (or a whole full view) changed. */
export interface WatchChange {
  kind: 'full' | 'delta';
  /** The version the view is at now, and (for a delta) the one it came from. */
  version: number;
  from?: number;
  /** Backends added or changed (whole), and addresses that left. */
  changed: WatchedBackend[];
  removed: string[];
  /** A full view sent because this client read too slowly and its deltas were dropped. */
  resync: boolean;
  /** The load balancer is another one, or restarted (a new `run`): versions count anew. */
  restarted: boolean;
  at: number;
}

export interface WatchEvents {
  change: [WatchChange];
  stale: [{ since: number; lastError: string | undefined }];
  connected: [{ address: string; node: string; run: string }];
  disconnected: [{ address: string; reason: string }];
}

type Target = { host: string; port: number; text: string };

function targetsOf(opts: WatchOptions): Target[] {
  const list = opts.addresses ?? (opts.host !== undefined ? [{ host: opts.host, port: opts.port ?? DEFAULT_QUERY_PORT }] : []);
  if (list.length === 0) throw new LocalError('QHCP_ERR_CLI_USAGE', 'watch: give `addresses` (or `host`) of a load balancer query port');
  return list.map((a) => {
    const { host, port } = typeof a === 'string' ? parseAddress(a, DEFAULT_QUERY_PORT) : a;
    return { host, port, text: host.includes(':') ? `[${host}]:${port}` : `${host}:${port}` };
  });
}

/** A member as balancers read it: `reportedAt` in this host's clock, from the age the load balancer gave. */
function asBackend(m: WatchMember, receivedAt = Date.now()): WatchedBackend {
  const reportedAt = m.reportAgeMs === null || m.reportAgeMs === undefined ? null : receivedAt - m.reportAgeMs;
  return Object.freeze({ ...m, metrics: Object.freeze({ ...m.metrics }), reportedAt, ageMs: 0, latencyMs: null });
}

/**
 * The balancer plugin for local picks, applied to a core of its own (hooks guarded as in the
 * load balancer, so a plugin that throws is contained and the pick finds no server).
 */
async function localBalancer(opts: WatchOptions, logger: Logger): Promise<LocalBalancer> {
  const spec = opts.balancer ?? 'round-robin';
  const entry = typeof spec === 'string' ? [spec, opts.balancerOptions ?? {}] : spec;
  const { config } = buildConfig(undefined, undefined, { plugins: [entry], defaults: false } as never);
  const core = new Core('loadbalancer', config, logger);
  await core.loadPlugins();
  const plugin = core.plugins.find((p) => p.family === 'balancer') ?? core.plugins[0];
  if (!plugin) throw new LocalError('QHCP_ERR_CONFIG_INVALID', `watch: "${typeof spec === 'string' ? spec : spec.name}" is not a balancer plugin`);
  return new LocalBalancer(plugin, {
    hooks: core.hooks,
    logger,
    ...(opts.slowStart ? { slowStart: opts.slowStart } : {}),
    ...(opts.panicThreshold !== undefined ? { panicThreshold: opts.panicThreshold } : {}),
    ...(opts.degraded ? { degraded: opts.degraded } : {}),
    pool: opts.service ? `service ${opts.service}` : 'watched',
  });
}

/**
 * A view not started yet: attach listeners (so that even the first full view's 'change' and
 * 'connected' are heard), then `start()` and `ready()`. `watch()` does all three.
 * @throws ConfigError for a balancer that does not load or options it refuses
 */
export async function createWatch(opts: WatchOptions): Promise<WatchView> {
  const logger = opts.logger ?? createLogger({ level: 'warn', name: 'qhcp-watch' });
  return new WatchView(opts, await localBalancer(opts, logger), logger);
}

/**
 * Starts watching; resolves once the first full view arrived (see WatchView).
 * @throws LocalError QHCP_ERR_CONNECT when no full view came within `readyTimeoutMs`; ConfigError for a bad balancer
 */
export async function watch(opts: WatchOptions): Promise<WatchView> {
  const view = await createWatch(opts);
  view.start();
  try {
    await view.ready(opts.readyTimeoutMs ?? 10_000);
  } catch (e) {
    await view.close();
    throw e;
  }
  return view;
}

export class WatchView extends EventEmitter<WatchEvents> {
  private readonly targets: Target[];
  private readonly byAddress = new Map<string, WatchedBackend>();
  private list: WatchedBackend[] = [];
  /** The version and run the view holds (0 / undefined before the first full view). */
  version = 0;
  run: string | undefined;
  /** The load balancer's node name (from its ACK). */
  node: string | undefined;
  /** The address of the load balancer streaming now, undefined while disconnected. */
  address: string | undefined;
  /** No load balancer for more than `staleAfterMs`: the view may be out of date. */
  stale = false;
  /** Why the last connection attempt or session failed. */
  lastError: string | undefined;
  private session: Session | undefined;
  private closed = false;
  private staleTimer: NodeJS.Timeout | undefined;
  private wake: (() => void) | undefined;
  private pendingFull: { version: number; run: string; members: WatchMember[]; resync: boolean } | undefined;
  private readyWaiters: Array<() => void> = [];
  private loopDone: Promise<void> = Promise.resolve();
  private started = false;

  constructor(
    private readonly opts: WatchOptions,
    private readonly balancer: LocalBalancer,
    private readonly logger: Logger,
  ) {
    super();
    this.targets = targetsOf(opts);
  }

  /** The backends of the view, in the load balancer's order. */
  get members(): readonly WatchedBackend[] {
    return this.list;
  }

  /** One backend by address. */
  get(address: string): WatchedBackend | undefined {
    return this.byAddress.get(address);
  }

  /** Whether a load balancer streams to this view now. */
  get connected(): boolean {
    return this.address !== undefined;
  }

  /** Panic mode engaged in the local balancer. */
  get panic(): boolean {
    return this.balancer.panic;
  }

  /**
   * A backend for `key` (affinity balancers hash it), chosen here by the balancer plugin over
   * the current view (stale or not), or undefined when none can be picked (`lastMiss` says why).
   */
  pick(key?: string): PickResult | undefined {
    return this.balancer.pick(key);
  }

  /** Why the last pick found no server. */
  get lastMiss(): string {
    return this.balancer.lastMiss;
  }

  /** Resolves once a full view has arrived; rejects after `timeoutMs` without one. */
  ready(timeoutMs = 10_000): Promise<this> {
    if (this.run !== undefined) return Promise.resolve(this);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.readyWaiters = this.readyWaiters.filter((w) => w !== done);
        reject(new LocalError('QHCP_ERR_CONNECT', `watch: no view from ${this.targets.map((t) => t.text).join(', ')} within ${timeoutMs} ms${this.lastError ? `: ${this.lastError}` : ''}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(t);
        resolve(this);
      };
      this.readyWaiters.push(done);
    });
  }

  /** Starts the connection loop (watch() calls it). */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.loopDone = this.loop();
  }

  /** Stops watching: ends the session (TERMINATE) and every timer; the view stays readable. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.staleTimer);
    this.wake?.();
    const s = this.session;
    if (s && !s.isClosed) {
      try {
        if (s.dfa.peek('send:TERMINATE')) await s.request('TERMINATE', {}, 1000);
      } catch {
        /* closing anyway */
      }
      s.close('done');
    }
    await this.loopDone;
  }

  private async loop(): Promise<void> {
    const minMs = Math.max(1, this.opts.backoff?.minMs ?? 100);
    const maxMs = Math.max(minMs, this.opts.backoff?.maxMs ?? 5000);
    let failures = 0;
    let i = 0;
    while (!this.closed) {
      const target = this.targets[i % this.targets.length]!;
      let streamed = false;
      try {
        streamed = await this.stream(target);
      } catch (e) {
        this.lastError = errorText(e);
      }
      if (this.closed) break;
      if (streamed) failures = 0;
      else failures++;
      // Next time, the next load balancer of the list (a lost one is likely still lost).
      i++;
      const delay = failures === 0 ? 0 : Math.min(maxMs, minMs * 2 ** (failures - 1)) * (0.5 + Math.random() / 2);
      if (delay > 0) {
        await new Promise<void>((r) => {
          const t = setTimeout(r, delay);
          this.wake = () => {
            clearTimeout(t);
            r();
          };
        });
        this.wake = undefined;
      }
    }
  }

  /** One session with `target`: HELLO, WATCH, updates until it ends. Returns whether a full view came. */
  private async stream(target: Target): Promise<boolean> {
    const token = typeof this.opts.token === 'function' ? await this.opts.token() : this.opts.token;
    let streamed = false;
    const ended = new Promise<SessionEnd>((resolve) => {
      void openQuerySession(
        {
          host: target.host,
          port: target.port,
          ...(this.opts.ca !== undefined ? { ca: this.opts.ca } : {}),
          ...(this.opts.serverName !== undefined ? { serverName: this.opts.serverName } : {}),
          ...(this.opts.timeoutMs !== undefined ? { timeoutMs: this.opts.timeoutMs } : {}),
          ...(this.opts.maxFrameBytes !== undefined ? { maxFrameBytes: this.opts.maxFrameBytes } : {}),
          idleTimeoutMs: this.opts.idleTimeoutMs ?? 5000,
          keepAliveMs: Math.max(50, Math.floor((this.opts.idleTimeoutMs ?? 5000) / 3)),
          ...(token !== undefined ? { token } : {}),
        },
        {
          onMessage: (m, s) => {
            if (m.type === 'WATCH_UPDATE' && s === this.session) {
              if (this.onUpdate(m, s) && !streamed) {
                streamed = true;
                this.onConnected(target, s);
              }
            }
          },
          onClose: (why) => resolve(why),
        },
      ).then(
        ({ session: s, ack }) => {
          this.node = ack.node;
          if (this.closed) {
            s.close('done');
            return;
          }
          this.session = s;
          const watchBody = { seq: 1, ...(this.opts.service !== undefined ? { service: this.opts.service } : {}), ...(this.opts.match !== undefined ? { address: this.opts.match } : {}) };
          // The first WATCH_UPDATE answers; the request times out (and closes the session) without one.
          s.request('WATCH', watchBody, this.opts.timeoutMs ?? 5000).catch(() => {});
        },
        (e: unknown) => resolve({ by: 'error', code: 0, reason: errorText(e) }),
      );
    });
    const why = await ended;
    this.session = undefined;
    if (!this.closed) {
      this.lastError = why.reason;
      if (streamed) {
        this.address = undefined;
        this.emit('disconnected', { address: target.text, reason: why.reason });
        this.logger.warn('watch: load balancer connection lost; serving the last view', { address: target.text, reason: why.reason });
      }
      this.armStale();
    }
    return streamed;
  }

  private onConnected(target: Target, s: Session): void {
    this.address = target.text;
    clearTimeout(this.staleTimer);
    this.staleTimer = undefined;
    this.stale = false;
    this.emit('connected', { address: target.text, node: s.peer.node ?? this.node ?? '', run: this.run! });
  }

  private armStale(): void {
    if (this.staleTimer || this.stale) return;
    const since = Date.now();
    this.staleTimer = setTimeout(() => {
      this.staleTimer = undefined;
      if (this.closed || this.connected) return;
      this.stale = true;
      this.emit('stale', { since, lastError: this.lastError });
    }, this.opts.staleAfterMs ?? 5000);
    this.staleTimer.unref();
  }

  /** Applies one WATCH_UPDATE; returns whether the view is complete (a full view has been applied). */
  private onUpdate(m: Extract<Message, { type: 'WATCH_UPDATE' }>, s: Session): boolean {
    const b = m.body;
    const bad = (why: string) => {
      // The stream no longer fits what we hold: end it, and the next session starts with a full view.
      s.fail(new ProtocolError('INVALID_MESSAGE', why));
      return false;
    };
    if (b.kind === 'full') {
      const p = this.pendingFull;
      if (p && (p.version !== b.version || p.run !== b.run)) return bad(`full view page of version ${b.version} inside the full view of version ${p.version}`);
      const full = p ?? { version: b.version, run: b.run, members: [], resync: b.resync === true };
      full.members.push(...b.members);
      if (b.more) {
        this.pendingFull = full;
        return this.run !== undefined;
      }
      this.pendingFull = undefined;
      this.applyFull(full);
      return true;
    }
    if (this.pendingFull) return bad('delta inside a full view');
    if (b.run !== this.run || b.from !== this.version) return bad(`delta from version ${b.from} (run ${b.run}) does not apply to version ${this.version} (run ${this.run})`);
    const changed = b.members.map(asBackend);
    for (const x of changed) this.byAddress.set(x.address, x);
    const removed = (b.removed ?? []).filter((a) => this.byAddress.delete(a));
    if (removed.length > 0 || changed.some((x) => !this.list.some((y) => y.address === x.address))) {
      // Membership changed: keep the load balancer's order for existing members, new ones last.
      const seen = new Set<string>();
      const next: WatchedBackend[] = [];
      for (const y of this.list) {
        const cur = this.byAddress.get(y.address);
        if (cur) next.push(cur), seen.add(y.address);
      }
      for (const x of changed) if (!seen.has(x.address)) next.push(x), seen.add(x.address);
      this.list = next;
    } else {
      this.list = this.list.map((y) => this.byAddress.get(y.address)!);
    }
    const from = this.version;
    this.version = b.version;
    this.balancer.update(this.list);
    this.emit('change', { kind: 'delta', version: b.version, from, changed, removed, resync: false, restarted: false, at: Date.now() });
    return true;
  }

  private applyFull(full: { version: number; run: string; members: WatchMember[]; resync: boolean }): void {
    const restarted = this.run !== undefined && this.run !== full.run;
    const before = this.byAddress;
    const list = full.members.map(asBackend);
    const now = new Map(list.map((x) => [x.address, x]));
    // What the load balancer says, not when we heard it: a member whose fields are all the same is not a change.
    const same = (a: WatchedBackend, b: WatchedBackend) => JSON.stringify({ ...a, reportedAt: 0 }) === JSON.stringify({ ...b, reportedAt: 0 });
    const changed = list.filter((x) => {
      const old = before.get(x.address);
      return !old || !same(old, x);
    });
    const removed = [...before.keys()].filter((a) => !now.has(a));
    this.list = list;
    this.byAddress.clear();
    for (const [a, x] of now) this.byAddress.set(a, x);
    this.version = full.version;
    const first = this.run === undefined;
    this.run = full.run;
    this.balancer.update(this.list);
    this.emit('change', { kind: 'full', version: full.version, changed, removed, resync: full.resync, restarted, at: Date.now() });
    if (first) for (const w of this.readyWaiters.splice(0)) w();
  }
}
