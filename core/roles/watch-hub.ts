/**
 * WATCH on the query port (docs/protocol.md, "WATCH"): each subscriber gets the load balancer's
 * view as a full view (WATCH_UPDATE kind "full", paged to the client's frame size), then every
 * change as a delta naming the version it applies to. The view and its changes come from the
 * SyncDispatcher (core/plugin/sync.ts), the same per-tick diff the `sync` plugins read; each of
 * its updates is one version. Versions count from 1 per run; `run` is new every start.
 *
 * Backpressure: a delta is written only while the client reads (the previous frames were taken
 * by QUIC flow control); meanwhile deltas wait in a queue bounded in count and bytes. Past the
 * bound the queue is dropped and the client gets a fresh full view (`resync: true`) once it reads
 * again, so a slow client costs at most its queue, never an unbounded backlog.
 */
import { randomBytes } from 'node:crypto';
import type { Session } from '../protocol/session.ts';
import type { Bodies, WatchMember } from '../protocol/messages.ts';
import type { BackendView, SyncUpdate } from '../plugin/hooks.ts';
import type { SyncDispatcher } from '../plugin/sync.ts';

/** Bytes a WATCH_UPDATE leaves for its envelope (seq, run, version, kind, from, flags) below the frame limit. */
const ENVELOPE_BYTES = 512;

export interface WatchLimits {
  /** Deltas waiting per subscriber before they are dropped for a fresh full view. */
  maxQueue: number;
  /** The same bound in bytes of JSON. */
  maxQueueBytes: number;
}

export const DEFAULT_WATCH_LIMITS: WatchLimits = { maxQueue: 64, maxQueueBytes: 1024 * 1024 };

interface Delta {
  version: number;
  members: WatchMember[];
  removed: string[];
  bytes: number;
}

interface Subscriber {
  session: Session;
  seq: number;
  service: string | undefined;
  pattern: string | undefined;
  /** The version the client holds (the last full view or delta sent whole). */
  sent: number;
  queue: Delta[];
  queueBytes: number;
  /** A full view is owed (first one, or after the queue overflowed). */
  needFull: boolean;
  resync: boolean;
  /** A full view being sent, page by page. */
  full: { members: WatchMember[]; version: number; offset: number; resync: boolean } | undefined;
  /** Waiting for QUIC flow control to take what was written. */
  blocked: boolean;
}

/**
 * Whether `text` matches `pattern`, where `*` stands for any run of characters (and nothing else
 * is special). Linear backtracking over the last star only: no regular expression to blow up.
 */
export function globMatch(pattern: string, text: string): boolean {
  let p = 0;
  let t = 0;
  let star = -1;
  let mark = 0;
  while (t < text.length) {
    if (p < pattern.length && pattern[p] !== '*' && pattern[p] === text[t]) {
      p++;
      t++;
    } else if (p < pattern.length && pattern[p] === '*') {
      star = p++;
      mark = t;
    } else if (star >= 0) {
      p = star + 1;
      t = ++mark;
    } else return false;
  }
  while (p < pattern.length && pattern[p] === '*') p++;
  return p === pattern.length;
}

/** A backend as WATCH_UPDATE carries it, at `now`. */
export function toMember(b: BackendView, now = Date.now()): WatchMember {
  const age = b.reportedAt === null || b.reportedAt === undefined ? null : Math.min(86_400_000, Math.max(0, Math.round(now - b.reportedAt + (b.ageMs ?? 0))));
  return {
    address: b.address,
    ...(b.service !== undefined ? { service: b.service } : {}),
    state: b.state,
    since: Math.round(b.since ?? 0),
    verdict: b.verdict,
    agentAdmin: b.agentAdmin,
    adminState: b.adminState,
    weight: b.weight,
    metrics: b.metrics,
    reason: b.reason ?? null,
    reportAgeMs: age,
  };
}

export class WatchHub {
  /** This run of the load balancer: a client that sees it change knows the versions restarted. */
  readonly run = randomBytes(8).toString('hex');
  private version = 0;
  /** The current view, as members, in configuration order. */
  private view: WatchMember[] = [];
  private readonly bytes = new WeakMap<WatchMember, number>();
  private readonly subs = new Map<Session, Subscriber>();
  private unlisten: (() => void) | undefined;
  /** Full views sent because a subscriber fell behind (its deltas dropped); for /metrics and tests. */
  readonly stats = { resyncs: 0, updates: 0 };

  constructor(
    private readonly feed: () => SyncDispatcher,
    /** The largest WATCH_UPDATE payload for a session (its HELLO maxFrameBytes and ours). */
    private readonly frameBudget: (s: Session) => number,
    private readonly limits: WatchLimits = DEFAULT_WATCH_LIMITS,
  ) {}

  /** Subscribers now. */
  get size(): number {
    return this.subs.size;
  }

  /** The current version (0 before the first update). */
  get current(): number {
    return this.version;
  }

  /** Starts streaming to `session` (it has just received WATCH): a full view first, then deltas. */
  subscribe(session: Session, body: Bodies['WATCH']): void {
    if (!this.unlisten) {
      const feed = this.feed();
      this.unlisten = feed.listen((u) => this.onUpdate(u));
      if (feed.latest) this.onUpdate(feed.latest);
      else feed.flush();
    }
    const sub: Subscriber = {
      session,
      seq: body.seq,
      service: body.service,
      pattern: body.address,
      sent: 0,
      queue: [],
      queueBytes: 0,
      needFull: true,
      resync: false,
      full: undefined,
      blocked: false,
    };
    this.subs.set(session, sub);
    this.pump(sub);
  }

  /** The session ended: forget it (its queue goes with it). */
  forget(session: Session): void {
    this.subs.delete(session);
  }

  stop(): void {
    this.unlisten?.();
    this.unlisten = undefined;
    this.subs.clear();
  }

  private wants(sub: Subscriber, address: string, service: string | undefined): boolean {
    return (sub.service === undefined || service === sub.service) && (sub.pattern === undefined || globMatch(sub.pattern, address));
  }

  private sizeOf(m: WatchMember): number {
    let n = this.bytes.get(m);
    if (n === undefined) this.bytes.set(m, (n = Buffer.byteLength(JSON.stringify(m)) + 1));
    return n;
  }

  private onUpdate(u: SyncUpdate): void {
    this.version++;
    this.stats.updates++;
    const changed = new Map(u.changed.map((b) => [b.address, toMember(b)]));
    const prev = new Map(this.view.map((m) => [m.address, m]));
    this.view = u.view.map((b) => changed.get(b.address) ?? prev.get(b.address) ?? toMember(b));
    for (const sub of this.subs.values()) {
      const members = [...changed.values()].filter((m) => this.wants(sub, m.address, m.service));
      const removed = u.removed.filter((a) => {
        const was = prev.get(a);
        return this.wants(sub, a, was?.service);
      });
      if (members.length === 0 && removed.length === 0) continue;
      const bytes = members.reduce((n, m) => n + this.sizeOf(m), 0) + removed.reduce((n, a) => n + a.length + 3, 0);
      if (bytes + ENVELOPE_BYTES > this.frameBudget(sub.session)) {
        // Too large for one frame: the client gets the whole view again (paged) instead.
        sub.queue = [];
        sub.queueBytes = 0;
        sub.needFull = true;
      } else if (!sub.needFull) {
        sub.queue.push({ version: this.version, members, removed, bytes });
        sub.queueBytes += bytes;
        if (sub.queue.length > this.limits.maxQueue || sub.queueBytes > this.limits.maxQueueBytes) {
          sub.queue = [];
          sub.queueBytes = 0;
          sub.needFull = true;
          sub.resync = true;
          this.stats.resyncs++;
        }
      }
      this.pump(sub);
    }
  }

  /** Writes what the subscriber is owed while QUIC takes it at once; else waits for it to. */
  private pump(sub: Subscriber): void {
    const s = sub.session;
    while (!sub.blocked && !s.isClosed && this.subs.get(s) === sub) {
      let ok: boolean;
      if (sub.full) {
        ok = this.sendPage(sub, sub.full);
      } else if (sub.needFull) {
        const members = this.view.filter((m) => this.wants(sub, m.address, m.service));
        sub.full = { members, version: this.version, offset: 0, resync: sub.resync };
        sub.needFull = false;
        sub.resync = false;
        // The full view holds every change so far: what waited is in it.
        sub.queue = [];
        sub.queueBytes = 0;
        continue;
      } else if (sub.queue.length > 0) {
        const d = sub.queue.shift()!;
        sub.queueBytes -= d.bytes;
        ok = s.trySend('WATCH_UPDATE', {
          seq: sub.seq,
          run: this.run,
          version: d.version,
          kind: 'delta',
          from: sub.sent,
          members: d.members,
          ...(d.removed.length > 0 ? { removed: d.removed } : {}),
        });
        if (ok) sub.sent = d.version;
      } else return;
      if (!ok) {
        this.subs.delete(s);
        return;
      }
      if (s.channel.pendingBytes > 0) {
        sub.blocked = true;
        void s.written().then(() => {
          sub.blocked = false;
          this.pump(sub);
        });
      }
    }
  }

  /** Sends the next page of a full view; the last one moves the client to its version. */
  private sendPage(sub: Subscriber, full: NonNullable<Subscriber['full']>): boolean {
    const budget = this.frameBudget(sub.session);
    const page: WatchMember[] = [];
    let used = ENVELOPE_BYTES;
    let i = full.offset;
    for (; i < full.members.length; i++) {
      let m = full.members[i]!;
      let n = this.sizeOf(m);
      if (page.length === 0 && used + n > budget) {
        // One backend too large for a page alone: sent without its metrics rather than never.
        m = { ...m, metrics: {} };
        n = this.sizeOf(m);
      }
      if (used + n > budget && page.length > 0) break;
      page.push(m);
      used += n;
    }
    const more = i < full.members.length;
    full.offset = i;
    const ok = sub.session.trySend('WATCH_UPDATE', {
      seq: sub.seq,
      run: this.run,
      version: full.version,
      kind: 'full',
      members: page,
      ...(more ? { more: true } : {}),
      ...(full.resync ? { resync: true } : {}),
    });
    if (!more) {
      sub.full = undefined;
      if (ok) sub.sent = full.version;
    }
    return ok;
  }
}
