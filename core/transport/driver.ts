/**
 * A lean QUIC driver on quiche's native binding (shipped by @matrixai/quic as
 * `@matrixai/quic/native`). quiche does QUIC (TLS 1.3, loss recovery, congestion control); this
 * file only moves bytes and time:
 *
 * - one UDP socket per endpoint (large kernel buffers), many connections on it, each routed by
 *   the destination connection id of the packets that arrive (all our ids are 20 bytes, so short
 *   headers parse without state);
 * - one timer for all connections' deadlines (core/util/deadlines.ts);
 * - datagrams are drained from quiche after every receive, timeout and application write, once
 *   per event-loop turn (setImmediate), so acknowledgements ride along with data written in the
 *   same turn;
 * - a server answers unknown versions with Version Negotiation, first Initials with a stateless
 *   Retry (retry.ts), and caps the handshakes in progress;
 * - connection migration is refused: a packet for a known connection from another address is
 *   dropped (quiche is also told `disable_active_migration`).
 *
 * Nothing here allocates per packet beyond the datagram's own Buffer view, the routing key string
 * and what the binding itself returns.
 */
import { createSocket, type Socket, type RemoteInfo } from 'node:dgram';
import { createHmac, randomBytes, randomFillSync } from 'node:crypto';
import { isIP, isIPv4 } from 'node:net';
import { lookup as dnsLookup, type LookupOptions } from 'node:dns';
import quiche from '@matrixai/quic/native/quiche.js';
import type { Connection as NativeConnection, Config as NativeConfig, Host as HostPort } from '@matrixai/quic/native/types.js';
import { DeadlineHeap, type Timed } from '../util/deadlines.ts';
import { RetryTokens, TokenLedger, tokenExpiry } from './retry.ts';

export type { NativeConnection, NativeConfig, HostPort };
export { quiche };

/** Length of every connection id we issue (quiche's maximum). */
export const CID_LEN = 20;
/** QUIC version 1. */
const QUIC_V1 = 0x00000001;
/** Largest datagram we send and accept (what quiche assumes for a path it has not probed). */
export const MAX_DATAGRAM = quiche.MAX_DATAGRAM_SIZE;
/** Kernel socket buffers asked for (the kernel caps them at net.core.[rw]mem_max). */
const SOCKET_BUFFER = 4 * 1024 * 1024;
/** Datagrams queued in libuv before the driver stops draining quiche (a full socket buffer). */
export const MAX_SEND_QUEUE = 2048;
/**
 * At most one echo (`Conn.echoes`) per connection in this many ms: a peer that floods PINGs gets
 * its acknowledgements, not a PING of ours for each (at most 200 a second). A checker's nudges
 * come at most three or four per check, the closest a sixth of the check timeout apart (push; a
 * quarter in poll): 5 ms or more from a 60 ms interval on, so there a nudge's echo is never held
 * back by another's.
 */
export const ECHO_GAP_MS = 5;

/**
 * A deferring connection (`Conn.ackDeferMs`) acknowledges in-order data with this packet at the
 * latest: two held back, the third acknowledges all three (checker.ts ackDeferFor sizes the
 * deadline to match).
 */
export const ACK_EVERY = 3;

/**
 * Datagrams one connection may hand to the socket in one drain; the rest waits for the next
 * event-loop turn, so one connection cannot hold the loop (quiche's congestion window bounds a
 * healthy connection far below this).
 */
const MAX_DRAIN = 256;
/**
 * CONNECTION_CLOSE datagrams sent for a connection we closed that quiche keeps in the closing
 * state. quiche (the version the binding ships) returns a fresh CONNECTION_CLOSE from every
 * send() when the application closed a client connection before the handshake was confirmed,
 * and never starts draining: without this bound the drain loop never ends (seen as a load
 * balancer that stopped answering, N = 10 at 100 ms on a loaded machine). RFC 9000 section
 * 10.2.1 lets a closing endpoint limit the closes it sends; quiche's timers still end it.
 */
export const MAX_CLOSE_DATAGRAMS = 3;
/** Extra connection ids each side issues after the handshake (besides the first). */
const EXTRA_CIDS = 2;
/** Stateless resets sent per second at most (each answers a packet for an unknown id). */
const RESETS_PER_SECOND = 100;
/** A connection silent this long when quiche's timer fires (a probe timeout) gets its port probed. */
const PROBE_AFTER_MS = 100;
/**
 * Receive moderation (`Endpoint.holdMs`) applies only with at least this many connections open
 * and none in its handshake: a few connections gain nothing from it, and a handshake must not wait.
 */
export const HOLD_MIN_CONNS = 64;
/** The longest receive moderation (ms). */
export const MAX_HOLD_MS = 20;
/**
 * Datagrams libuv reads from a UDP socket in one poll callback at most (deps/uv/src/unix/udp.c,
 * uv__udp_recvmsg: 32 more after the first, then back to the event loop). A turn that got this
 * many may have left more in the kernel's buffer: receive moderation does not hold after it.
 */
export const RECV_BATCH = 32;
/**
 * How long a judgment by a missing message waits at most for the socket to be read past its
 * deadline (`readPast`/`whenReadPast`: the checker's probes, nudges and timeouts, a session's
 * response timeout, a handshake's limit): a process behind on its own reading does not take its
 * lateness for its peers' (as Cassandra's failure detector ignores what it saw across a local
 * pause), but one that stays behind this long judges anyway.
 */
export const MAX_LOCAL_LAG_MS = 5_000;

/**
 * The receive moderation for traffic whose shortest period is `intervalMs`: 1/50 of it (2% of an
 * interval: a report or answer is read at most that much later), at most MAX_HOLD_MS.
 */
export function holdFor(intervalMs: number): number {
  return Math.max(0, Math.min(MAX_HOLD_MS, Math.floor(intervalMs / 50)));
}
/** Port probes in flight at once per endpoint, and how long each waits for an ICMP error. */
const MAX_PROBES = 64;
const PROBE_WAIT_MS = 1000;

/** How a connection ended, as the driver saw it. */
export interface ConnEnd {
  by: 'local' | 'peer' | 'idle' | 'error';
  code: number;
  isApp: boolean;
  reason: string;
}

/** What the layer above a connection hears. */
export interface ConnEvents {
  /** Handshake done (and, on a client, the peer's certificate checked by `verify`). */
  established(): void;
  /** quiche took packets or a timeout fired: read streams, flush queued writes. */
  progress(): void;
  /** The connection is over (reported once, as soon as it is known; quiche may still drain). */
  ended(end: ConnEnd): void;
}

export interface DriverStats {
  datagramsIn: number;
  datagramsOut: number;
  dropped: number;
  retries: number;
  versionNegotiations: number;
  tokensRefused: number;
  handshakesRefused: number;
  migrationsRefused: number;
  statelessResets: number;
  sendStalls: number;
  /** Drains cut at MAX_DRAIN datagrams (a runaway closed connection is dropped then). */
  drainCaps: number;
  sendErrors: number;
  /** Connections failed at once because a port probe came back ICMP port unreachable. */
  portsUnreachable: number;
  /** Receive moderation pauses (`Endpoint.holdMs`). */
  holds: number;
  /** Turns that read a full batch (RECV_BATCH) and so did not hold: the socket is read on while it has a backlog. */
  holdsSkipped: number;
  /** PINGs sent for callers whose answer was overdue (`Conn.nudge`). */
  nudges: number;
  /** Acknowledgements held back to ride with a later packet (`Conn.ackDeferMs`). */
  acksDeferred: number;
  /** PINGs a server sent back for a PING it was sent (`Conn.echoes`). */
  echoes: number;
  /** PINGs not echoed: another echo on the connection within ECHO_GAP_MS (a PING flood). */
  echoesCapped: number;
}

const CLOSED_REASON = new Uint8Array(0);
const PROBE = Buffer.alloc(1);

/** One QUIC connection on an endpoint. */
export class Conn implements Timed {
  deadline = Infinity;
  heapIndex = -1;
  /** Routing keys (connection ids as latin1 strings) this connection answers to. */
  readonly cids: string[] = [];
  events: ConnEvents | undefined;
  established = false;
  /** quiche reports the connection closed; it is gone from the endpoint. */
  finished = false;
  end: ConnEnd | undefined;
  /** Counted among the endpoint's handshakes in progress. */
  pending = false;
  /** Counted in the endpoint's `opening` (not established, not ended). */
  opening = true;
  handshakeAt = Infinity;
  /** The handshake limit this connection got (ms), named when it passes. */
  handshakeLimitMs = 0;
  keepAliveMs = 0;
  private keepAliveAt = Infinity;
  private quicheAt = Infinity;
  dirty = false;
  /** quiche took packets this turn: `progress` runs once in the flush, however many came. */
  received = false;
  /**
   * Acknowledgement deferral (0: off; a client whose peer sends one packet per period, set from
   * ConnectOptions.ackDeferMs). Packets that brought stream data, when nothing else is to be sent,
   * are acknowledged with the third such packet (ACK_EVERY), with the next packet we send anyway
   * (a poll's request), or after this many ms, whichever comes first, within the max_ack_delay we
   * announced, which covers it. (RFC 9000 section 13.2.2 recommends every second ack-eliciting
   * packet, for the sender's congestion window; a peer that sends one small packet per period
   * never meets its window, and each acknowledgement is a datagram for 1000 peers a second.)
   * A packet that brought no stream data (out of order: the data before it was lost; or a PING)
   * is acknowledged at once, so the peer learns of a loss as soon as we can tell it.
   */
  ackDeferMs = 0;
  /** Something besides acknowledgements may be owed (we wrote, closed, a timer fired): the next flush drains. */
  mustSend = false;
  /** Packets quiche was given since the last drain, and whether reading them delivered stream bytes. */
  packetsIn = 0;
  dataIn = false;
  /** Packets whose acknowledgement is held back, and when it must leave (performance.now()). */
  private acksOwed = 0;
  private ackAt = Infinity;
  /** Client side: checks the peer's certificate chain once the handshake is done; a reason refuses it. */
  verify: ((chain: Uint8Array[]) => string | undefined) | undefined;
  verifyProblem: string | undefined;
  /** A Node-side failure to report (e.g. ICMP port unreachable on a connected socket). */
  failure: string | undefined;
  /** CONNECTION_CLOSE datagrams sent since we closed it (MAX_CLOSE_DATAGRAMS). */
  closeSends = 0;
  /** We asked quiche to close it (close(), the handshake limit). */
  closeCalled = false;
  /** When a packet last arrived from the peer, and when we last probed its port (performance.now()). */
  lastRecvAt = performance.now();
  probeAt = 0;
  /** When this (server) connection last echoed a PING (`ECHO_GAP_MS`). */
  echoAt = -Infinity;

  constructor(
    readonly ep: Endpoint,
    readonly q: NativeConnection,
    /** The peer as the socket sees it (IPv4 peers of a dual-stack socket in ::ffff: form). */
    readonly remote: HostPort,
    readonly isServer: boolean,
  ) {}

  /** host:port for logs ([v6]:port; IPv4-mapped addresses shown as IPv4). */
  get remoteText(): string {
    const h = this.remote.host.startsWith('::ffff:') && isIPv4(this.remote.host.slice(7)) ? this.remote.host.slice(7) : this.remote.host;
    return `${h.includes(':') ? `[${h}]` : h}:${this.remote.port}`;
  }

  /** Closes with an application (or transport) code; the CONNECTION_CLOSE leaves this turn. */
  close(isApp: boolean, code: number, reason: string | Uint8Array = CLOSED_REASON): void {
    if (this.finished) return;
    // What was written before the close (an ERROR frame) leaves first: quiche sends nothing
    // but CONNECTION_CLOSE once closed.
    if (this.established) this.ep.drainNow(this);
    this.closeCalled = true;
    try {
      this.q.close(isApp, code, typeof reason === 'string' ? Buffer.from(reason.slice(0, 200), 'utf8') : reason);
    } catch {
      /* already closing */
    }
    this.ep.touch(this);
  }

  /** The handshake limit passed while the socket had not been read past it: judged after the read (`waitForRead`). */
  private readWait = false;

  /**
   * The handshake limit is due, but the socket has not been read past it (this process was
   * late): the peer's flight may be waiting in the kernel's buffer. True while the limit waits
   * for the read (`Endpoint.readPast`).
   */
  private waitForRead(): boolean {
    if (this.readWait || this.ep.readPast(this.handshakeAt)) return this.readWait;
    this.readWait = true;
    this.ep.whenReadPast(this.handshakeAt, () => {
      this.readWait = false;
      if (!this.finished) this.schedule(performance.now());
    });
    return true;
  }

  /** Recomputes this connection's next deadline from quiche's and our own. */
  schedule(now: number): void {
    const t = this.q.timeout();
    this.quicheAt = t === null ? Infinity : now + t;
    let at = this.quicheAt;
    if (!this.established && !this.readWait && this.handshakeAt < at) at = this.handshakeAt;
    if (this.keepAliveMs > 0 && this.established) {
      if (this.keepAliveAt === Infinity) this.keepAliveAt = now + this.keepAliveMs;
      if (this.keepAliveAt < at) at = this.keepAliveAt;
    }
    if (this.ackAt < at) at = this.ackAt;
    this.ep.timers.set(this, this.finished ? Infinity : at);
  }

  /**
   * Whether this drain may wait (`ackDeferMs`): only an acknowledgement of in-order stream data
   * is owed, for fewer than two packets, and the connection is established and not ending.
   */
  deferAck(now: number): boolean {
    if (this.ackDeferMs === 0 || this.mustSend || !this.dataIn || !this.established || this.end !== undefined) return false;
    this.acksOwed += this.packetsIn;
    this.packetsIn = 0;
    this.dataIn = false;
    if (this.acksOwed >= ACK_EVERY) return false;
    if (this.ackAt === Infinity) this.ackAt = now + this.ackDeferMs;
    this.ep.stats.acksDeferred++;
    return true;
  }

  /** About to drain: whatever was owed leaves now. */
  drained(): void {
    this.mustSend = false;
    this.packetsIn = 0;
    this.dataIn = false;
    this.acksOwed = 0;
    this.ackAt = Infinity;
  }

  /**
   * A server's PING answered with a PING: the packets just read brought no stream data and we
   * wrote nothing, yet quiche had something to send, so they were ack-eliciting: a client's
   * nudge (or keep-alive). Our acknowledgement alone would not tell us whether our last answer
   * arrived; the client acknowledges this PING at once (`ackDeferMs`), and if our answer was
   * lost, that acknowledgement of a later packet lets quiche declare it lost and resend it now
   * (RFC 9002 section 6.1) instead of at our probe timeout. An ACK-only packet makes quiche send
   * nothing, so this never loops.
   */
  get echoes(): boolean {
    return this.isServer && this.established && this.end === undefined && this.packetsIn > 0 && !this.dataIn && !this.mustSend;
  }

  /**
   * Asks the peer for an acknowledgement now (a PING, RFC 9000 section 19.2), for a caller whose
   * answer is overdue. QUIC repairs a lost packet when a later one is acknowledged (RFC 9002
   * section 6.1) or at a probe timeout that doubles with each one unanswered and starts from an
   * RTT estimate the handshake inflates (measured: 100-230 ms for the first exchanges of a
   * loopback connection; at 20% loss a request then waited out 76, 152, 304 ms). The PING's
   * acknowledgement lets quiche declare our lost request lost and resend it at once, and resets
   * the backoff. A lost answer is repaired by the server's echo (`echoes`): a peer that answers a
   * PING with an ACK-only packet (quiche does, by itself) resends its lost answer only at its own
   * probe timeout (traced through a lossy relay: 192-248 ms after it, then doubling). Nothing when
   * the handshake is not done or the connection is ending.
   */
  nudge(): void {
    if (!this.established || this.finished || this.end !== undefined) return;
    this.q.sendAckEliciting();
    this.ep.stats.nudges++;
    this.ep.touch(this);
  }

  /** Deadline reached: runs whichever of quiche's timeout, the handshake limit, keep-alive is due. */
  /** Returns whether quiche's own timer was among what was due. */
  onDeadline(now: number): boolean {
    let quicheDue = false;
    if (now >= this.quicheAt) {
      this.quicheAt = Infinity;
      this.q.onTimeout();
      quicheDue = true;
    }
    if (!this.established && now >= this.handshakeAt && !this.q.isClosed() && !this.waitForRead()) {
      this.handshakeAt = Infinity;
      this.failure ??= `no handshake within ${Math.round(this.handshakeLimitMs)} ms`;
      this.closeCalled = true;
      try {
        this.q.close(false, 0x0, Buffer.from('handshake timeout'));
      } catch {
        /* closing already */
      }
    }
    if (this.established && now >= this.keepAliveAt) {
      this.keepAliveAt = now + this.keepAliveMs;
      this.q.sendAckEliciting();
    }
    // A deferred acknowledgement's time: the drain that follows (progress, touch) sends it.
    if (now >= this.ackAt) this.ackAt = Infinity;
    return quicheDue;
  }
}

export interface ServerSide {
  config: NativeConfig;
  /** Handshakes in progress at once; Initials beyond it are dropped and `refused` told. */
  maxPendingHandshakes: number;
  handshakeTimeoutMs: number;
  /** A connection finished its handshake. */
  accepted(conn: Conn): void;
  refused?(remote: string): void;
  keylog?: string;
  /**
   * Accept a first Initial from a loopback address without a Retry round trip. Retry proves a
   * client receives at its address (against spoofed sources: amplification, and handshake slots
   * held by replayed Initials). A loopback source cannot come from another host (the kernel drops
   * such packets arriving on other interfaces), and a local process can complete a Retry anyway,
   * so for loopback it proves nothing and costs a round trip per connection; everyone else still
   * gets the Retry. The query port sets it (`qhcp status` on the load balancer's host).
   */
  loopbackWithoutRetry?: boolean;
}

/**
 * The socket's name lookup: every address the driver sends to is an IP literal, which this
 * answers at once. dgram's default (dns.lookup) answers a literal on the next tick, which cost
 * a deferred call and two closures per datagram sent; names still go to dns.lookup.
 */
const literals = new Map<string, number>();
function literalLookup(host: string, opts: LookupOptions, cb: (err: NodeJS.ErrnoException | null, address: string, family: number) => void): void {
  // The same peer addresses come back datagram after datagram; isIP runs an IPv6 regex on each.
  const known = literals.get(host);
  if (known !== undefined) return cb(null, host, known);
  const family = isIP(host);
  if (family === 0) return dnsLookup(host, opts, cb as never);
  if (literals.size >= 65_536) literals.clear();
  literals.set(host, family);
  cb(null, host, family);
}

/** Whether `host` (as a dual-stack socket reports it) is a loopback address. */
export function isLoopback(host: string): boolean {
  const h = host.startsWith('::ffff:') ? host.slice(7) : host;
  return h === '::1' || (isIPv4(h) && h.startsWith('127.'));
}

/** One UDP socket and the connections on it. */
export class Endpoint {
  readonly conns = new Map<string, Conn>();
  readonly timers = new DeadlineHeap<Conn>((now) => this.onTimers(now));
  readonly stats: DriverStats = { datagramsIn: 0, datagramsOut: 0, dropped: 0, retries: 0, versionNegotiations: 0, tokensRefused: 0, handshakesRefused: 0, migrationsRefused: 0, statelessResets: 0, sendStalls: 0, drainCaps: 0, sendErrors: 0, portsUnreachable: 0, holds: 0, holdsSkipped: 0, nudges: 0, acksDeferred: 0, echoes: 0, echoesCapped: 0 };
  /** Connections (not ids) open on this endpoint. */
  count = 0;
  pendingHandshakes = 0;
  server: ServerSide | undefined;
  private readonly tokens = new RetryTokens();
  private readonly ledger = new TokenLedger();
  private readonly resetKey = randomBytes(32);
  private resetBudget = RESETS_PER_SECOND;
  private resetWindow = 0;
  private dirty: Conn[] = [];
  /** Connections quiche took packets for since their last read (and a spare list to swap in). */
  private arrived: Conn[] = [];
  private arrivedSpare: Conn[] = [];
  /** Datagrams were read since the last flush (receive moderation holds only after those). */
  private readSince = false;
  /** Datagrams delivered since the last look at them (`noteBatch`). */
  private batch = 0;
  /** The last read got a full batch (RECV_BATCH): more may wait in the kernel's buffer. */
  private backlog = false;
  /**
   * performance.now() when the socket was last known empty: a read turn that got less than a
   * full batch, or a turn that found nothing to read while not holding. Whatever arrived before
   * it has been read (`readPast`).
   */
  private drainedAt = -Infinity;
  /** Callers of `whenReadPast` still waiting, with when the wait ends regardless (deadline + MAX_LOCAL_LAG_MS). */
  private drainWatchers: Array<{ cb: () => void; by: number }> = [];
  private drainReady: Array<() => void> = [];
  private recheckScheduled = false;
  /** The next flush drains at once: the one before only read what had arrived. */
  private drainNext = false;
  private flushing = false;
  private flushScheduled = false;
  private arena = Buffer.allocUnsafe(64 * 1024);
  private arenaOff = 0;
  private readonly recvInfo: { from: HostPort; to: HostPort };
  private inFlight = 0;
  private drainWaiters: Array<() => void> = [];
  private stopped = false;
  /** Closes the socket once its last connection is gone (a connection's private endpoint). */
  closeWhenIdle = false;
  /** Connected to one peer (a private client endpoint): ICMP errors are reported. */
  private connectedTo: HostPort | undefined;
  /** Connections not established yet (either side). */
  private opening = 0;
  /**
   * Receive moderation (0: off), as a network card's interrupt moderation: after a turn that read
   * datagrams, the socket is not read again for this many ms, so what arrives meanwhile waits in
   * the kernel's buffer and is read, processed and answered in one turn. With a thousand peers
   * each sending once a second, the process then wakes ~1000/holdMs times a second instead of a
   * thousand. Only with HOLD_MIN_CONNS connections open and no handshake in progress; the owner
   * keeps it well under what its timing can bear (the load balancer: 1/50 of its shortest interval).
   */
  holdMs = 0;
  /** The hold that applies now: `holdMs` with HOLD_MIN_CONNS or more connections open, else 0. */
  get moderationMs(): number {
    return this.count >= HOLD_MIN_CONNS ? this.holdMs : 0;
  }
  private holding = false;
  private holdTimer: NodeJS.Timeout | undefined;
  /** libuv's handle under the dgram socket (recvStop/recvStart), when this Node exposes it. */
  private readonly udp: { recvStop(): number; recvStart(): number } | undefined;
  private readonly resume = (): void => {
    this.holdTimer = undefined;
    this.holding = false;
    if (!this.socketClosed) this.udp!.recvStart();
    if (this.drainWatchers.length) this.scheduleRecheck();
  };

  /**
   * Whether a judgment due at `deadline` (performance.now() ms) by a message that has not come
   * may be made now: everything that reached the socket before it has been read, or the deadline
   * is MAX_LOCAL_LAG_MS old. Not when the process fell behind (a stall, or more arriving than it
   * reads) or a hold keeps datagrams waiting: the message may then sit unread in the kernel's buffer.
   */
  readPast(deadline: number): boolean {
    return this.drainedAt >= deadline || performance.now() - deadline >= MAX_LOCAL_LAG_MS;
  }

  /**
   * Runs `cb` once `readPast(deadline)` holds: the socket has been read empty after this call
   * and what was read has been handed to its connections (in a later turn than the read:
   * promise continuations of the messages have run), or MAX_LOCAL_LAG_MS has passed since the
   * deadline. A hold in progress ends now.
   */
  whenReadPast(deadline: number, cb: () => void): void {
    this.drainWatchers.push({ cb, by: deadline + MAX_LOCAL_LAG_MS });
    if (this.socketClosed) return this.drained();
    if (this.holding) {
      clearTimeout(this.holdTimer);
      this.resume();
    } else this.scheduleRecheck();
  }

  private scheduleRecheck(): void {
    if (this.recheckScheduled) return;
    this.recheckScheduled = true;
    setImmediate(this.recheck);
  }

  /**
   * A check phase: the poll phase before it read what the socket had (at most a batch). Runs
   * every turn while anyone waits; a wait that reached its bound ends with the socket still behind.
   */
  private readonly recheck = (): void => {
    this.recheckScheduled = false;
    this.noteBatch(true);
    if (this.drainWatchers.length === 0) return;
    const now = performance.now();
    const over = this.drainWatchers.filter((w) => w.by <= now);
    if (over.length > 0) {
      this.drainWatchers = this.drainWatchers.filter((w) => w.by > now);
      this.ready(over);
    }
    if (this.drainWatchers.length) this.scheduleRecheck();
  };

  /**
   * Looks at the datagrams delivered since the last look: a full batch means more may wait
   * (`backlog`); fewer, or none in a check phase while reading (`emptyIsDrained`), mean the
   * socket was read empty: `drainedAt` moves, and the drain watchers run in the next turn
   * (after the flush that hands this read to its connections).
   */
  private noteBatch(emptyIsDrained: boolean): void {
    const n = this.batch;
    this.batch = 0;
    if (n >= RECV_BATCH) {
      this.backlog = true;
      return;
    }
    if (n === 0 && (!emptyIsDrained || this.holding)) return;
    this.backlog = false;
    this.drainedAt = performance.now();
    this.drained();
  }

  /** The socket was read empty: the watchers so far run in the next turn. */
  private drained(): void {
    if (this.drainWatchers.length > 0) this.ready(this.drainWatchers.splice(0));
  }

  /** `watchers` run in the next turn (one run per turn: a run already set takes these too). */
  private ready(watchers: Array<{ cb: () => void }>): void {
    if (this.drainReady.length === 0) setImmediate(this.runDrainReady);
    for (const w of watchers) this.drainReady.push(w.cb);
  }

  private readonly runDrainReady = (): void => {
    for (const w of this.drainReady.splice(0)) w();
  };

  private constructor(
    readonly socket: Socket,
    readonly local: HostPort,
  ) {
    this.recvInfo = { from: { host: '', port: 0 }, to: { host: local.host, port: local.port } };
    socket.on('message', this.onMessage);
    // dgram keeps its handle under a symbol (its public `_handle` is deprecated); without it,
    // receive moderation stays off.
    const state = Object.getOwnPropertySymbols(socket).find((x) => x.description === 'state symbol');
    const handle = state ? (socket as unknown as Record<symbol, { handle?: Partial<Endpoint['udp']> }>)[state]?.handle : undefined;
    this.udp = typeof handle?.recvStop === 'function' && typeof handle.recvStart === 'function' ? (handle as Endpoint['udp']) : undefined;
    socket.on('error', this.onSocketError);
    // Closed under us (a test playing kill -9 closes it directly): nothing may touch it again.
    socket.on('close', () => {
      this.stopped = true;
      this.socketClosed = true;
      if (this.holdTimer) clearTimeout(this.holdTimer);
      this.timers.disarm();
      // Nothing more will be read: whoever waits for a drain judges now.
      this.drained();
    });
  }

  /**
   * Binds a UDP socket. `host` '::' takes IPv4 and IPv6; an IPv4 address makes an IPv4 socket.
   * @throws the bind error (EADDRINUSE, EADDRNOTAVAIL, EACCES)
   */
  static async open(host: string, port: number): Promise<Endpoint> {
    const v4 = isIPv4(host);
    const socket = createSocket({ type: v4 ? 'udp4' : 'udp6', ipv6Only: false, recvBufferSize: SOCKET_BUFFER, sendBufferSize: SOCKET_BUFFER, lookup: literalLookup });
    await new Promise<void>((resolve, reject) => {
      const fail = (e: Error): void => reject(e);
      socket.once('error', fail);
      socket.bind({ address: host, port, exclusive: true }, () => {
        socket.off('error', fail);
        resolve();
      });
    }).catch((e: unknown) => {
      try {
        socket.close();
      } catch {
        /* not bound */
      }
      throw e;
    });
    const a = socket.address();
    return new Endpoint(socket, { host: a.address, port: a.port });
  }

  /** Connects the socket to its only peer, so the kernel reports ICMP errors for it. */
  async connectTo(remote: HostPort): Promise<void> {
    await new Promise<void>((resolve, reject) => this.socket.connect(remote.port, remote.host, (e?: Error) => (e ? reject(e) : resolve())));
    this.connectedTo = remote;
  }

  /** The address form this socket uses for `host` (IPv4 as ::ffff: on an IPv6 socket). */
  peerAddress(host: string): string {
    if (this.local.host.includes(':') && isIPv4(host)) return `::ffff:${host}`;
    return host;
  }

  /** Starts a client connection to `remote` (already in the socket's address form). */
  connect(serverName: string | undefined, remote: HostPort, config: NativeConfig, handshakeTimeoutMs: number, keylog?: string): Conn {
    const scid = this.freshCid();
    const q = quiche.Connection.connect(serverName ?? null, scid, this.local, remote, config);
    if (keylog) q.setKeylog(keylog);
    const conn = new Conn(this, q, remote, false);
    conn.handshakeAt = performance.now() + handshakeTimeoutMs;
    conn.handshakeLimitMs = handshakeTimeoutMs;
    this.route(conn, scid);
    this.count++;
    this.opening++;
    this.touch(conn);
    return conn;
  }

  /** A connection id no connection on this endpoint uses. */
  private freshCid(): Buffer {
    for (;;) {
      const cid = randomBytes(CID_LEN);
      if (!this.conns.has(cid.toString('latin1'))) return cid;
    }
  }

  private route(conn: Conn, cid: Uint8Array): void {
    const key = Buffer.from(cid.buffer, cid.byteOffset, cid.byteLength).toString('latin1');
    this.conns.set(key, conn);
    conn.cids.push(key);
  }

  /** The stateless reset token for a connection id we issued (RFC 9000 section 10.3). */
  private resetToken(cid: Uint8Array): Buffer {
    return createHmac('sha256', this.resetKey).update(cid).digest().subarray(0, 16);
  }

  /**
   * Marks `conn` for a drain at the end of this event-loop turn: it has something to send. Whoever
   * writes to quiche (streamSend, close, a PING) calls this: a drain after a receive without it
   * may be held back (`Conn.deferAck`) or taken for the answer to a PING (`Conn.echoes`).
   */
  touch(conn: Conn): void {
    conn.mustSend = true;
    this.mark(conn);
  }

  /** Marks `conn` for the end of this turn after a receive (its acknowledgement may wait: `Conn.deferAck`). */
  private mark(conn: Conn): void {
    if (conn.dirty || conn.finished) return;
    conn.dirty = true;
    this.dirty.push(conn);
    if (!this.flushScheduled && !this.flushing) {
      this.flushScheduled = true;
      setImmediate(this.flush);
    }
  }

  private readonly onMessage = (msg: Buffer, rinfo: RemoteInfo): void => {
    this.stats.datagramsIn++;
    this.batch++;
    if (msg.length < 1 + CID_LEN) {
      this.stats.dropped++;
      return;
    }
    const long = (msg[0]! & 0x80) !== 0;
    let key: string;
    if (long) {
      const n = msg[5]!;
      if (n > CID_LEN || msg.length < 6 + n) {
        this.stats.dropped++;
        return;
      }
      key = msg.toString('latin1', 6, 6 + n);
    } else key = msg.toString('latin1', 1, 1 + CID_LEN);
    const conn = this.conns.get(key);
    if (conn) {
      this.recvOn(conn, msg, rinfo);
      return;
    }
    if (long) this.unknownLong(msg, rinfo);
    else this.unknownShort(msg, rinfo);
  };

  private recvOn(conn: Conn, msg: Buffer, rinfo: RemoteInfo): void {
    if (conn.finished) return;
    if (rinfo.port !== conn.remote.port || rinfo.address !== conn.remote.host) {
      // Migration (or a NAT rebinding, or a spoofed source) is refused: we answer only the
      // address the handshake was done with.
      this.stats.migrationsRefused++;
      return;
    }
    conn.lastRecvAt = performance.now();
    const ri = this.recvInfo;
    ri.from.host = rinfo.address;
    ri.from.port = rinfo.port;
    try {
      conn.q.recv(msg, ri);
    } catch {
      // A packet quiche would not take (undecryptable, duplicate, or a fatal error, in which
      // case the connection is now closing and that is reported below).
    }
    // What the packets mean (streams, establishment, the end) is read once per connection at the
    // end of this event-loop turn (flush): the datagrams a turn reads for one connection cost one
    // pass over its streams, and the answers they cause leave in the same drain.
    conn.packetsIn++;
    if (!conn.received) {
      conn.received = true;
      this.arrived.push(conn);
    }
    this.mark(conn);
  }

  /**
   * Reads what arrived for each connection since the last read (`recvOn`); each is left to
   * drain. Returns whether a client connection was among them.
   */
  private readArrived(): boolean {
    if (this.arrived.length === 0) return false;
    this.readSince = true;
    const list = this.arrived;
    this.arrived = this.arrivedSpare;
    let client = false;
    for (const conn of list) {
      conn.received = false;
      if (conn.finished) continue;
      if (!conn.isServer) client = true;
      this.advance(conn, false);
      this.mark(conn);
    }
    list.length = 0;
    this.arrivedSpare = list;
    return client;
  }

  /** After quiche took packets or a timeout: establishment, streams, ids, the end; then a drain. */
  private progress(conn: Conn): void {
    this.advance(conn);
    this.touch(conn);
  }

  /** Establishment, streams, retired ids, the end: what quiche's new state means. */
  private advance(conn: Conn, check = true): void {
    const q = conn.q;
    if (!conn.established && q.isEstablished() && !q.isClosed() && !q.isDraining()) this.onEstablished(conn);
    if (conn.established && !conn.end) {
      for (let id = q.retiredScidNext(); id !== null; id = q.retiredScidNext()) this.unroute(conn, id);
      conn.events?.progress();
    }
    if (check) this.checkEnd(conn);
  }

  private onEstablished(conn: Conn): void {
    if (conn.verify) {
      const problem = conn.verify(conn.q.peerCertChain() ?? []);
      if (problem !== undefined) {
        conn.verifyProblem = problem;
        conn.failure = problem;
        // TLS alert bad_certificate (42), as QUIC carries it.
        conn.close(false, 0x100 + 42);
        this.checkEnd(conn);
        return;
      }
    }
    conn.established = true;
    this.leavePending(conn);
    this.issueCids(conn);
    if (conn.isServer) this.server?.accepted(conn);
    conn.events?.established();
  }

  /** Gives the peer spare connection ids (each with its stateless reset token). */
  private issueCids(conn: Conn): void {
    const q = conn.q;
    let n = Math.min(EXTRA_CIDS, q.sourceCidsLeft());
    while (n-- > 0) {
      const cid = this.freshCid();
      try {
        q.newSourceCid(cid, BigInt(`0x${this.resetToken(cid).toString('hex')}`), false);
      } catch {
        return;
      }
      this.route(conn, cid);
    }
  }

  private unroute(conn: Conn, cid: Uint8Array): void {
    const key = Buffer.from(cid.buffer, cid.byteOffset, cid.byteLength).toString('latin1');
    if (this.conns.get(key) === conn) this.conns.delete(key);
    const i = conn.cids.indexOf(key);
    if (i >= 0) conn.cids.splice(i, 1);
  }

  private leavePending(conn: Conn): void {
    if (conn.pending) {
      conn.pending = false;
      this.pendingHandshakes--;
    }
    if (conn.opening) {
      conn.opening = false;
      this.opening--;
    }
  }

  /** Reports the end once it is known; forgets the connection once quiche says it is closed. */
  private checkEnd(conn: Conn): void {
    const q = conn.q;
    const closed = q.isClosed();
    if (!conn.end) {
      let end: ConnEnd | undefined;
      // A peer's CONNECTION_CLOSE puts quiche in draining at once (RFC 9000 section 10.2.2), so
      // the open, steady case costs two calls into quiche here, not four.
      const ending = closed || q.isDraining();
      const peer = ending ? q.peerError() : null;
      if (peer) end = { by: 'peer', code: peer.errorCode, isApp: peer.isApp, reason: Buffer.from(peer.reason).toString('utf8') };
      else if (ending) {
        const local = q.localError();
        if (conn.failure) end = { by: 'error', code: 0, isApp: false, reason: conn.failure };
        else if (q.isTimedOut()) end = { by: 'idle', code: 0, isApp: false, reason: 'idle timeout' };
        else if (local) end = { by: 'error', code: local.errorCode, isApp: local.isApp, reason: Buffer.from(local.reason).toString('utf8') || `transport error ${local.errorCode}` };
        else end = { by: 'error', code: 0, isApp: false, reason: 'connection closed' };
      } else if (conn.failure && q.localError()) {
        end = { by: 'error', code: 0, isApp: false, reason: conn.failure };
      }
      if (end) {
        conn.end = end;
        this.leavePending(conn);
        conn.events?.ended(end);
      }
    }
    if (!conn.finished && closed) this.forget(conn);
  }

  private forget(conn: Conn): void {
    conn.finished = true;
    this.leavePending(conn);
    for (const key of conn.cids) if (this.conns.get(key) === conn) this.conns.delete(key);
    conn.cids.length = 0;
    this.timers.remove(conn);
    this.count--;
    if (this.count === 0 && this.closeWhenIdle) void this.close();
  }

  /** We closed `conn`: its end is reported now; quiche keeps draining it underneath. */
  endLocal(conn: Conn, code: number, reason: string): void {
    if (conn.end) return;
    const end: ConnEnd = { by: 'local', code, isApp: true, reason };
    conn.end = end;
    this.leavePending(conn);
    conn.events?.ended(end);
  }

  private unknownLong(msg: Buffer, rinfo: RemoteInfo): void {
    const server = this.server;
    if (!server || this.stopped) {
      this.stats.dropped++;
      return;
    }
    const version = msg.readUInt32BE(1);
    if (version === 0) {
      this.stats.dropped++;
      return;
    }
    // Clients pad Initials to 1200 bytes; answering anything shorter would amplify.
    if (msg.length < quiche.MIN_CLIENT_INITIAL_LEN) {
      this.stats.dropped++;
      return;
    }
    let header;
    try {
      header = quiche.Header.fromSlice(msg, CID_LEN);
    } catch {
      this.stats.dropped++;
      return;
    }
    if (version !== QUIC_V1 && !quiche.versionIsSupported(version)) {
      const out = this.take();
      const n = quiche.negotiateVersion(header.scid, header.dcid, out);
      this.stats.versionNegotiations++;
      this.sendDatagram(out.subarray(0, n), rinfo.port, rinfo.address);
      return;
    }
    if (header.ty !== quiche.Type.Initial) {
      this.stats.dropped++;
      return;
    }
    const token = header.token;
    if ((!token || token.length === 0) && server.loopbackWithoutRetry && isLoopback(rinfo.address)) {
      this.acceptInitial(msg, rinfo, header.dcid, undefined);
      return;
    }
    if (!token || token.length === 0) {
      const scid = this.freshCid();
      const t = this.tokens.mint(header.dcid, scid, rinfo.address, rinfo.port);
      const out = this.take();
      const n = quiche.retry(header.scid, header.dcid, scid, t, version, out);
      this.stats.retries++;
      this.sendDatagram(out.subarray(0, n), rinfo.port, rinfo.address);
      return;
    }
    const checked = this.tokens.check(token, header.dcid, rinfo.address, rinfo.port);
    if ('refused' in checked || header.dcid.length !== CID_LEN) {
      this.stats.tokensRefused++;
      return;
    }
    if (!this.roomForHandshake(rinfo)) return;
    if (!this.ledger.spend(Buffer.from(header.dcid).toString('latin1'), tokenExpiry(token))) {
      this.stats.tokensRefused++;
      return;
    }
    this.acceptInitial(msg, rinfo, header.dcid, checked.odcid);
  }

  /** Whether another handshake may start; when not, counted and reported. */
  private roomForHandshake(rinfo: RemoteInfo): boolean {
    if (this.pendingHandshakes < this.server!.maxPendingHandshakes) return true;
    this.stats.handshakesRefused++;
    this.server!.refused?.(`${rinfo.address}:${rinfo.port}`);
    return false;
  }

  /**
   * Starts a server connection for a client Initial. After a Retry, `odcid` is the client's
   * first destination id and `dcid` the one the Retry gave it (ours, routed); without a Retry
   * (`odcid` undefined) we pick our id and route the client's too until it switches.
   */
  private acceptInitial(msg: Buffer, rinfo: RemoteInfo, dcid: Uint8Array, odcid: Uint8Array | undefined): void {
    const server = this.server!;
    if (odcid === undefined && !this.roomForHandshake(rinfo)) return;
    const scid = odcid === undefined ? this.freshCid() : dcid;
    let q: NativeConnection;
    const peer = { host: rinfo.address, port: rinfo.port };
    try {
      q = quiche.Connection.accept(scid, odcid ?? null, this.local, peer, server.config);
    } catch {
      this.stats.dropped++;
      return;
    }
    if (server.keylog) q.setKeylog(server.keylog);
    const conn = new Conn(this, q, peer, true);
    conn.pending = true;
    this.pendingHandshakes++;
    conn.handshakeAt = performance.now() + server.handshakeTimeoutMs;
    conn.handshakeLimitMs = server.handshakeTimeoutMs;
    this.route(conn, scid);
    if (odcid === undefined) this.route(conn, dcid);
    this.count++;
    this.opening++;
    this.recvOn(conn, msg, rinfo);
  }

  /**
   * A short-header packet for no connection we know (ours that ended, or noise): a stateless
   * reset (RFC 9000 section 10.3), shorter than what triggered it so two endpoints cannot loop,
   * and rate-limited.
   */
  private unknownShort(msg: Buffer, rinfo: RemoteInfo): void {
    this.stats.dropped++;
    if (this.stopped || msg.length < 43) return;
    const sec = Math.floor(performance.now() / 1000);
    if (sec !== this.resetWindow) {
      this.resetWindow = sec;
      this.resetBudget = RESETS_PER_SECOND;
    }
    if (this.resetBudget <= 0) return;
    this.resetBudget--;
    const len = Math.min(msg.length - 1, 42);
    const out = this.take().subarray(0, len);
    randomFillSync(out, 0, len - 16);
    out[0] = (out[0]! & 0x3f) | 0x40;
    this.resetToken(msg.subarray(1, 1 + CID_LEN)).copy(out, len - 16);
    this.stats.statelessResets++;
    this.sendDatagram(out, rinfo.port, rinfo.address);
  }

  /** A slice of the send arena big enough for one datagram. */
  private take(): Buffer {
    if (this.arenaOff + MAX_DATAGRAM > this.arena.length) {
      // Views of the old arena may still sit in libuv's queue: start a fresh one.
      this.arena = Buffer.allocUnsafe(this.arena.length);
      this.arenaOff = 0;
    }
    return this.arena.subarray(this.arenaOff, this.arenaOff + MAX_DATAGRAM);
  }

  private sendDatagram(view: Buffer, port: number, host: string): void {
    this.arenaOff += view.length;
    this.stats.datagramsOut++;
    this.inFlight++;
    if (this.connectedTo) this.socket.send(view, this.onSent);
    else this.socket.send(view, port, host, this.onSent);
  }

  private readonly onSent = (err: Error | null): void => {
    this.inFlight--;
    if (err) this.stats.sendErrors++;
    if (this.inFlight === 0 && this.drainWaiters.length) for (const w of this.drainWaiters.splice(0)) w();
  };

  /** Drains every touched connection's datagrams into the socket. */
  private readonly flush = (): void => {
    this.flushScheduled = false;
    if (this.stopped && this.socketClosed) return;
    this.noteBatch(false);
    if (this.arrived.length > 0 && !this.drainNext) {
      // Two steps when a client connection read something: read now, drain in the next turn's
      // check phase. A client's caller (QueryClient, the checker) writes its next request in
      // promise continuations, which run after this callback: the request then leaves in the
      // same datagram as the acknowledgement of the answer, not one datagram after it. A server
      // answers within the read, so its connections drain in this turn.
      this.flushScheduled = true;
      this.drainNext = true;
      if (this.readArrived()) {
        setImmediate(this.flush);
        return;
      }
      this.flushScheduled = false;
    }
    this.drainNext = false;
    // Anything that arrived since is read and drained now.
    this.readArrived();
    // A hold caps what is read to one batch per hold (RECV_BATCH / holdMs: 1,600 datagrams a second
    // at 20 ms): after a full batch the socket is read on until a turn finds less, so a backlog
    // (10,000 reports a second, or a stall's worth) is read at the speed of the process instead of
    // growing until the kernel drops datagrams.
    if (this.moderationMs > 0 && !this.holding && this.readSince && this.udp && this.opening === 0 && !this.stopped) {
      if (this.backlog) this.stats.holdsSkipped++;
      else if (this.drainWatchers.length === 0) {
        this.holding = true;
        this.stats.holds++;
        this.udp.recvStop();
        this.holdTimer = setTimeout(this.resume, this.holdMs);
      }
    }
    this.readSince = false;
    this.flushing = true;
    const now = performance.now();
    let i = 0;
    let again: Conn[] | undefined;
    try {
      for (; i < this.dirty.length; i++) {
        if (this.socketClosed) break;
        // A full socket buffer: leave the rest in quiche (it paces and retransmits) and try
        // again shortly, instead of queueing datagrams in memory without bound.
        if (this.socket.getSendQueueCount() > MAX_SEND_QUEUE) {
          this.stats.sendStalls++;
          break;
        }
        const conn = this.dirty[i]!;
        conn.dirty = false;
        if (conn.finished) continue;
        if (!conn.deferAck(now)) {
          const echo = conn.echoes;
          const sent = this.stats.datagramsOut;
          if (this.drain(conn)) (again ??= []).push(conn);
          else if (echo && this.stats.datagramsOut > sent) {
            if (now - conn.echoAt >= ECHO_GAP_MS) {
              conn.echoAt = now;
              conn.q.sendAckEliciting();
              this.stats.echoes++;
              this.drain(conn);
            } else this.stats.echoesCapped++;
          }
        }
        conn.schedule(now);
        this.checkEnd(conn);
      }
    } finally {
      this.flushing = false;
    }
    const rest = this.dirty.length - i;
    if (rest > 0) {
      this.dirty = this.dirty.slice(i);
      this.flushScheduled = true;
      setTimeout(this.flush, 1);
    } else this.dirty.length = 0;
    // Connections that had more to send than one drain takes: next turn.
    if (again) for (const conn of again) this.touch(conn);
  };

  /** Sends `conn`'s pending datagrams now (before a close). */
  drainNow(conn: Conn): void {
    if (!this.socketClosed && this.drain(conn)) this.touch(conn);
  }

  /** Hands `conn`'s datagrams to the socket; true when it stopped at MAX_DRAIN with more to send. */
  private drain(conn: Conn): boolean {
    conn.drained();
    const q = conn.q;
    // Closed by us and not draining yet: quiche is sending CONNECTION_CLOSE, one per datagram.
    // (Asked only of a connection we closed or whose end is known: three calls saved per drain.)
    const closing = (conn.closeCalled || conn.end !== undefined) && q.localError() !== null && !q.isDraining() && !q.isClosed();
    for (let n = 0; ; n++) {
      if (closing && conn.closeSends >= MAX_CLOSE_DATAGRAMS) return false;
      if (n >= MAX_DRAIN) {
        // Bounded: quiche was seen handing out datagrams without end for a connection we had
        // already closed (end reported, quiche neither closed nor draining), which held the
        // event loop for good (a load balancer group releasing many sessions, test/integration/
        // cluster.test.ts). Such a connection is dropped; a live one sends the rest next turn.
        this.stats.drainCaps++;
        if (conn.end && !conn.finished) {
          this.forget(conn);
          return false;
        }
        return true;
      }
      const out = this.take();
      let r;
      try {
        r = q.send(out);
      } catch {
        return false;
      }
      if (r === null || r[0] <= 0) return false;
      if (closing) conn.closeSends++;
      const to = r[1].to;
      this.sendDatagram(out.subarray(0, r[0]), to.port, to.host);
    }
  }

  private onTimers(now: number): void {
    // Everything due within a millisecond runs now (Node timers have ms resolution).
    for (let top = this.timers.peek(); top && top.deadline <= now + 1; top = this.timers.peek()) {
      this.timers.remove(top);
      const quicheDue = top.onDeadline(now);
      // Only servers are probed: a client may sit on a connected socket, which the kernel answers
      // with port unreachable for any other source, so probing it would kill a live connection.
      if (quicheDue && !top.isServer && !this.connectedTo && !top.finished && !top.end && now - top.lastRecvAt > PROBE_AFTER_MS && now - top.probeAt > PROBE_WAIT_MS) this.probe(top, now);
      this.progress(top);
    }
  }

  private probes = 0;

  /**
   * The kernel tells an unconnected socket nothing of ICMP errors (Node cannot ask for
   * IP_RECVERR), so a connection on a shared socket whose peer went silent gets its port probed
   * from a throw-away connected socket: one byte (which a live QUIC endpoint drops as too short
   * to be a packet); ECONNREFUSED back means nothing listens there any more, and the connection
   * fails at once instead of at its timeout. Bounded: one probe per connection per second, at
   * most MAX_PROBES at once. The load balancer also asks for one when a pushed report is overdue
   * (`probeSilent`): nothing else would make a silent agent's port answer.
   */
  private probe(conn: Conn, now: number): void {
    conn.probeAt = now;
    void this.probePort(conn.remote.host, conn.remote.port).then((refused) => {
      if (refused && !conn.finished && !conn.end) {
        conn.failure ??= 'connection refused (ICMP port unreachable)';
        conn.close(false, 0x1);
        this.checkEnd(conn);
      }
    });
  }

  /**
   * Probes `conn`'s port now (see `probe`), unless probed within the last second and silent
   * since (a peer heard from after the last probe gets a new one: a late report under load must
   * not use up the probe of the next, missing one); clients on a shared socket only.
   */
  probeSilent(conn: Conn): void {
    const now = performance.now();
    if (!conn.isServer && !this.connectedTo && !conn.finished && !conn.end && (now - conn.probeAt > PROBE_WAIT_MS || conn.lastRecvAt > conn.probeAt)) this.probe(conn, now);
  }

  /**
   * One datagram to `host:port` from a throw-away connected socket: true when ICMP port
   * unreachable comes back within PROBE_WAIT_MS (nothing listens there), false otherwise (an
   * answer of any other kind, silence, or MAX_PROBES already in flight).
   */
  probePort(host: string, port: number): Promise<boolean> {
    if (this.probes >= MAX_PROBES || this.stopped) return Promise.resolve(false);
    this.probes++;
    return new Promise((resolve) => {
      const s = createSocket(host.includes(':') ? 'udp6' : 'udp4');
      let done = false;
      const end = (refused: boolean): void => {
        if (done) return;
        done = true;
        this.probes--;
        clearTimeout(timer);
        try {
          s.close();
        } catch {
          /* closed */
        }
        if (refused) this.stats.portsUnreachable++;
        resolve(refused);
      };
      const timer = setTimeout(() => end(false), PROBE_WAIT_MS);
      timer.unref();
      s.on('error', (e: NodeJS.ErrnoException) => end(e.code === 'ECONNREFUSED'));
      s.connect(port, host, () => {
        if (!done) s.send(PROBE, (err) => err && end(false));
      });
      s.unref();
    });
  }

  private readonly onSocketError = (e: NodeJS.ErrnoException): void => {
    // On a connected socket the kernel reports ICMP port unreachable as ECONNREFUSED: the
    // peer's host is up but nothing listens there. Fail its connections now rather than
    // waiting out the handshake or idle timeout.
    const why = e.code === 'ECONNREFUSED' ? 'connection refused (ICMP port unreachable)' : `socket error: ${e.message}`;
    for (const conn of new Set(this.conns.values())) {
      conn.failure ??= why;
      conn.close(false, 0x1);
      this.checkEnd(conn);
    }
  };

  private socketClosed = false;

  /**
   * Closes every connection with `code`, sends the closes, then closes the socket (waiting at
   * most `graceMs` for the kernel to take queued datagrams).
   */
  async close(code = 0, reason = 'shutting down', graceMs = 300): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const conn of new Set(this.conns.values())) {
      conn.close(true, code, reason);
      this.endLocal(conn, code, reason);
    }
    this.drainNext = true;
    this.flush();
    if (this.inFlight > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, graceMs);
        this.drainWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    this.timers.disarm();
    if (this.holdTimer) clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
    this.socketClosed = true;
    for (const conn of new Set(this.conns.values())) {
      conn.finished = true;
      this.timers.remove(conn);
    }
    this.conns.clear();
    this.count = 0;
    try {
      this.socket.close();
    } catch {
      /* closed */
    }
  }
}
