/**
 * The transport: QHCP over QUIC on our own driver (driver.ts) on quiche's native binding. It
 * listens, connects, carries one bidirectional control stream per connection, turns its bytes
 * into messages (codec.ts), and maps how a connection ended to one `ChannelClose` the session
 * layer reads. Peer misbehaviour closes that one connection; nothing here throws into the process.
 */
import { lookup } from 'node:dns/promises';
import { isIP, isIPv4 } from 'node:net';
import { FrameDecoder, encodeFrame, DEFAULT_MAX_FRAME_BYTES } from '../protocol/codec.ts';
import { ProtocolError, LocalError, errorText } from '../errors.ts';
import { MESSAGE_TYPES, type Message } from '../protocol/messages.ts';
import { checkServerChain } from './tls.ts';
import { Endpoint, quiche, MAX_HOLD_MS, type Conn, type ConnEnd, type ConnEvents, type NativeConfig, type DriverStats } from './driver.ts';

export { ACK_EVERY } from './driver.ts';

/** ALPN protocol id of QHCP version 1. */
export const ALPN = 'qhcp/1';

/** How the connection under a channel ended. */
export interface ChannelClose {
  /** 'local': we closed; 'peer': the peer closed; 'idle': idle timeout; 'error': transport failure. */
  by: 'local' | 'peer' | 'idle' | 'error';
  /** QUIC application close code (a QHCP wire error code, 0 for a clean close). */
  code: number;
  reason: string;
}

/** What a channel reports to the session above it. */
export interface ChannelHandler {
  message(msg: Message): void;
  /** Bytes that break the framing or message rules; the session answers with ERROR. */
  protocolError(err: ProtocolError): void;
  /** The control stream ended cleanly (FIN) on a frame boundary. */
  ended(): void;
  /**
   * The peer does not read what we owe it (`Channel.consumer`): `why` says how. The frame that
   * found it so was not queued; the session ends with ERROR 302 SLOW_CONSUMER.
   */
  slowConsumer?(why: string): void;
  closed(info: ChannelClose): void;
}

export interface ChannelLimits {
  maxFrameBytes: number;
}

/** Bytes written but not yet taken by QUIC flow control above which we stop reading the peer. */
const WRITE_HIGH_WATER = 128 * 1024;
/** The ERROR frame's type byte: an ERROR is queued whatever is owed (it ends the session). */
const ERROR_TYPE = MESSAGE_TYPES.ERROR;

/**
 * The slow-consumer rule, one for every channel (docs/operations.md, "Limits"): what we owe a
 * peer (written, not yet taken by QUIC flow control) is bounded in bytes and in time. A frame
 * written while we owe it more than `perConnection`, or while every channel together owes more
 * than `total`, is refused; a peer owed more than the read high-water mark (128 KiB, where we stop
 * reading its requests) that takes none of it for `stallMs` is reported too.
 */
export interface ConsumerLimits {
  perConnection: number;
  total: number;
  stallMs?: number;
}
/** Bytes read from one control stream per turn before other connections get theirs. */
const READ_SLICE = 64 * 1024;
const DONE = Promise.resolve();
/**
 * Flow-control windows we announce. They bound what a peer can make us buffer inside quiche and
 * need not hold a whole frame: bytes move from quiche into the frame decoder (bounded by
 * maxFrameBytes) as they arrive, which reopens the window.
 */
const STREAM_WINDOW = 256 * 1024;
const CONNECTION_WINDOW = 512 * 1024;
/** One read buffer for every stream of the process (bytes are copied out of it). */
const readBuf = Buffer.allocUnsafe(READ_SLICE);


const streamError = (e: unknown, kind: 'StreamReset' | 'StreamStopped'): number | undefined => {
  const m = e instanceof Error ? e.message.match(kind === 'StreamReset' ? /StreamReset\((\d{1,16})\)/ : /StreamStopped\((\d{1,16})\)/) : null;
  return m ? Number(m[1]) : undefined;
};

/** One QUIC connection and its control stream. */
export class Channel implements ConnEvents {
  protected streamId: number | undefined;
  private readonly decoder: FrameDecoder;
  private closing = false;
  private closedInfo: ChannelClose | undefined;
  private handler: ChannelHandler | undefined;
  private early: Array<() => void> = [];
  /** Written, not yet taken by quiche (flow control): chunks and the offset into the first. */
  private out: Buffer[] = [];
  private outOffset = 0;
  private outBytes = 0;
  /** Bytes of the queue quiche has taken since the start; writers wait for their end offset. */
  private outTotal = 0;
  private taken: Array<{ end: number; resolve: () => void }> = [];
  private streamDone = false;
  /** Reading the control stream stopped for good (test peers: test/helpers/raw-channel.ts). */
  protected readStopped = false;
  private moreToRead = false;
  /**
   * Decoded but not yet delivered, in order: frames wait here while the layer above holds
   * delivery (a request is being answered) or while we owe the peer more than WRITE_HIGH_WATER.
   * While anything waits here nothing more is read from the stream, so QUIC flow control holds
   * the peer: pipelined requests are answered one at a time, in order, at the rate it reads.
   */
  private inbox: Array<Message | ((h: ChannelHandler) => void)> = [];
  /** Index of the next entry of `inbox` to deliver (no shift per frame). */
  private inboxHead = 0;
  private held = false;
  private pumping = false;
  private reading = false;
  /** Set by the session: the slow-consumer rule for this channel (none: unbounded, a client). */
  consumer: ConsumerLimits | undefined;
  private stallTimer: NodeJS.Timeout | undefined;
  /** When the peer last took bytes while we owed it more than the high-water mark (performance.now()). */
  private movedAt = 0;
  private extraStreams: Set<number> | undefined;
  /** Bytes and frames received and sent, for metrics. */
  readonly counters = { framesIn: 0, framesOut: 0, bytesIn: 0, bytesOut: 0 };

  constructor(
    protected readonly conn: Conn,
    limits: ChannelLimits,
    private readonly onExtraStream?: (ch: Channel) => void,
  ) {
    this.decoder = new FrameDecoder(limits.maxFrameBytes);
    conn.events = this;
    if (!conn.isServer) this.streamId = 0;
  }

  get remote(): string {
    return this.conn.remoteText;
  }

  /**
   * The certificate chain the peer presented in the handshake (DER, its own certificate first;
   * empty when it presented none). A server sees a client's only when it listens with
   * `requestClientCert`. Not verified here: an auth plugin judges it (plugins/auth/mtls.ts).
   */
  get peerCertificates(): readonly Uint8Array[] {
    try {
      return this.conn.q.peerCertChain() ?? [];
    } catch {
      return [];
    }
  }

  /** The driver's connection under this channel (tests and diagnostics). */
  get connection(): Conn {
    return this.conn;
  }

  /** Whether a judgment due at `deadline` may be made: this connection's socket has been read past it (driver.ts `Endpoint.readPast`). */
  readPast(deadline: number): boolean {
    return this.conn.ep.readPast(deadline);
  }

  /** Runs `cb` once `readPast(deadline)` holds (driver.ts `Endpoint.whenReadPast`). */
  whenReadPast(deadline: number, cb: () => void): void {
    this.conn.ep.whenReadPast(deadline, cb);
  }

  get closed(): boolean {
    return this.closing || this.closedInfo !== undefined;
  }

  /**
   * The peer went silent when it should not have (a pushed report overdue): probe its port now;
   * ICMP port unreachable fails the connection at once (driver.ts `probeSilent`; at most once a second).
   */
  probePeer(): void {
    this.conn.ep.probeSilent(this.conn);
  }

  /** An answer is overdue: asks the peer for an acknowledgement now, so QUIC repairs a lost packet at once (driver.ts `Conn.nudge`). */
  nudge(): void {
    this.conn.nudge();
  }

  /** Bytes written on the control stream that QUIC flow control has not taken yet (the peer is not reading). */
  get pendingBytes(): number {
    return this.outBytes;
  }
  /** The same, summed over every channel in this process. */
  static totalPendingBytes = 0;

  /** Sets who hears about this channel; events that came before are replayed. */
  setHandler(handler: ChannelHandler): void {
    this.handler = handler;
    const early = this.early;
    this.early = [];
    for (const f of early) f();
  }

  private emit(f: (h: ChannelHandler) => void): void {
    if (this.handler) f(this.handler);
    else this.early.push(() => f(this.handler!));
  }

  /**
   * Holds (true) or releases delivery of received frames. A server session holds while it
   * answers a request, so the next pipelined request is not even decoded into the DFA before
   * the answer is sent (docs/protocol.md, "Requests and seq").
   */
  hold(on: boolean): void {
    if (this.held === on) return;
    this.held = on;
    if (!on && this.waiting > 0 && !this.pumping) {
      // Later, not inside the caller's send(): a run of pipelined requests must not recurse.
      this.pumping = true;
      queueMicrotask(() => {
        this.pumping = false;
        this.pump();
      });
    }
  }

  /** Delivers waiting frames while nothing holds them; reads on from the stream once all are out. */
  private pump(): void {
    while (this.waiting > 0 && !this.held && !this.closed && this.outBytes <= WRITE_HIGH_WATER) {
      const e = this.inbox[this.inboxHead++]!;
      // Frames are kept as they are (no closure per frame); other events as functions.
      const h = this.handler;
      if (!h) this.emit(typeof e === 'function' ? e : (x) => x.message(e));
      else if (typeof e === 'function') e(h);
      else h.message(e);
    }
    if (this.waiting === 0 || this.closed) {
      this.inbox = [];
      this.inboxHead = 0;
    }
    if (this.closed) return;
    if (this.waiting === 0 && this.streamId !== undefined && !this.reading) {
      this.readControl(this.streamId);
      this.conn.ep.touch(this.conn);
    }
  }

  /** Frames and events read but not yet delivered. */
  private get waiting(): number {
    return this.inbox.length - this.inboxHead;
  }

  /** Queues one event behind the frames already waiting, then delivers what may go now. */
  private deliver(f: (h: ChannelHandler) => void): void {
    this.inbox.push(f);
    if (this.waiting === 1) this.pump();
  }

  get hasStream(): boolean {
    return this.streamId !== undefined;
  }

  // ConnEvents (driver.ts)
  established(): void {}

  progress(): void {
    if (this.closed) return;
    this.flushOut();
    this.readStreams();
  }

  ended(end: ConnEnd): void {
    const code = end.isApp || end.by === 'local' ? end.code : 0;
    // A local close is reported after the caller's own bookkeeping (a session that closes on
    // a peer's ERROR records that first), as a library close would: on a later microtask.
    if (end.by === 'local') queueMicrotask(() => this.finish({ by: 'local', code, reason: end.reason }));
    else if (end.by === 'peer') this.finish({ by: 'peer', code, reason: (!end.isApp && peerTlsAlert(end.code)) || end.reason || 'peer closed' });
    else if (end.by === 'idle') this.finish({ by: 'idle', code: 0, reason: 'idle timeout' });
    else this.finish({ by: end.by, code, reason: end.reason });
  }

  private readStreams(): void {
    const q = this.conn.q;
    // The control stream first, without asking quiche for its readable set (an iterator object
    // per call); the set is read only when something else is readable (a second stream, or
    // control bytes left for later).
    if (!q.isReadable()) return;
    // In-order stream data arrived (driver.ts Conn.deferAck, Conn.echoes).
    this.conn.dataIn = true;
    if (this.streamId !== undefined) {
      // Read without asking streamReadable first: a stream with nothing to read gives null.
      this.readControl(this.streamId);
      if (this.closed || !q.isReadable()) return;
    }
    for (const id of q.readable()) {
      if (this.streamId === undefined && (id & 3) === 0 && this.conn.isServer) this.streamId = id;
      if (id !== this.streamId) {
        this.refuseStream(id);
        continue;
      }
      this.readControl(id);
      if (this.closed) return;
    }
  }

  /** A second stream: both directions shut, and the layer above told once per stream. */
  private refuseStream(id: number): void {
    const q = this.conn.q;
    try {
      q.streamShutdown(id, quiche.Shutdown.Read, 109); // STOP_SENDING with EXTRA_STREAM (docs/protocol.md, Transport)
    } catch {
      /* gone */
    }
    try {
      q.streamShutdown(id, quiche.Shutdown.Write, 109); // RESET_STREAM with EXTRA_STREAM
    } catch {
      /* unidirectional or gone */
    }
    this.extraStreams ??= new Set();
    if (this.extraStreams.has(id)) return;
    if (this.extraStreams.size < 64) this.extraStreams.add(id);
    this.conn.ep.touch(this.conn);
    this.onExtraStream?.(this);
  }

  protected readControl(id: number): void {
    if (this.reading) return;
    this.reading = true;
    try {
      this.readSlice(id);
    } finally {
      this.reading = false;
    }
  }

  private readSlice(id: number): void {
    if (this.readStopped || this.streamDone) return;
    // Backpressure: a peer that sends requests but never reads the answers would otherwise grow
    // our write queue without bound. Read on only once what we owe it has been taken, and once
    // every frame already read has been delivered.
    if (this.outBytes > WRITE_HIGH_WATER || this.waiting > 0) return;
    const q = this.conn.q;
    let taken = 0;
    for (;;) {
      let r: [number, boolean] | null;
      try {
        r = q.streamRecv(id, readBuf);
      } catch (e) {
        this.streamDone = true;
        if (streamError(e, 'StreamReset') !== undefined && this.decoder.bufferedBytes > 0) {
          const err = new ProtocolError('TRUNCATED_FRAME', `control stream reset inside a frame (${this.decoder.bufferedBytes} bytes buffered)`);
          this.deliver((h) => h.protocolError(err));
        } else this.deliver((h) => h.ended());
        return;
      }
      if (r === null) return;
      const [n, fin] = r;
      if (n > 0) {
        taken += n;
        this.counters.bytesIn += n;
        let messages: Message[];
        try {
          // The decoder copies what it keeps (a partial frame): readBuf is reused.
          messages = this.decoder.push(readBuf.subarray(0, n));
        } catch (e) {
          this.streamDone = true;
          if (e instanceof ProtocolError) this.deliver((h) => h.protocolError(e));
          return;
        }
        this.counters.framesIn += messages.length;
        if (messages.length > 0) {
          for (const m of messages) this.inbox.push(m);
          this.pump();
        }
        if (this.closed) return;
      }
      if (fin) {
        this.streamDone = true;
        try {
          this.decoder.end();
          this.deliver((h) => h.ended());
        } catch (e) {
          if (e instanceof ProtocolError) this.deliver((h) => h.protocolError(e));
        }
        return;
      }
      // Frames wait (held, or we owe too much): read no more until they are delivered (pump).
      if (this.waiting > 0) return;
      // quiche fills the buffer while in-order data is ready: less means none is left now.
      if (n < readBuf.length) return;
      if (taken >= READ_SLICE || this.outBytes > WRITE_HIGH_WATER) {
        // Fairness: let other connections in before reading more of this one.
        if (!this.moreToRead) {
          this.moreToRead = true;
          setImmediate(() => {
            this.moreToRead = false;
            if (!this.closed) {
              this.readControl(id);
              this.conn.ep.touch(this.conn);
            }
          });
        }
        return;
      }
    }
  }

  /**
   * Queues bytes on the control stream and hands what flow control allows to quiche now.
   * Resolves once quiche has taken all of them (at once, unless the peer is not reading).
   */
  protected write(bytes: Buffer): Promise<void> {
    this.conn.ep.touch(this.conn);
    if (this.out.length === 0) {
      const n = this.streamSend(bytes);
      if (n < 0 || n === bytes.length) return DONE;
      bytes = n === 0 ? bytes : bytes.subarray(n);
    }
    this.out.push(bytes);
    this.outBytes += bytes.length;
    Channel.totalPendingBytes += bytes.length;
    if (this.outBytes > WRITE_HIGH_WATER) this.watchStall(false);
    return new Promise<void>((resolve) => this.taken.push({ end: this.outTotal + this.outBytes, resolve }));
  }

  /** Bytes quiche took (0: none now), or -1 when the stream can take no more ever. */
  private streamSend(bytes: Buffer): number {
    try {
      return this.conn.q.streamSend(this.streamId!, bytes, false) ?? 0;
    } catch {
      // STOP_SENDING from the peer, or the connection is closing: the close path reports it.
      this.dropOut();
      return -1;
    }
  }

  /** Forgets queued bytes (the stream or connection is gone); their writers are released. */
  protected dropOut(): void {
    this.out = [];
    this.outTotal += this.outBytes;
    Channel.totalPendingBytes -= this.outBytes;
    this.outBytes = 0;
    this.outOffset = 0;
    for (const t of this.taken.splice(0)) t.resolve();
  }

  /**
   * The time half of the slow-consumer rule: a timer runs while we owe more than WRITE_HIGH_WATER;
   * bytes taken by the peer (`moved`) only note the time, and the timer, when it fires, waits on
   * from there (one timer per stall, not one per packet).
   */
  private watchStall(moved: boolean): void {
    const ms = this.consumer?.stallMs;
    if (ms === undefined) return;
    if (this.outBytes <= WRITE_HIGH_WATER || this.closed) {
      if (this.stallTimer) clearTimeout(this.stallTimer);
      this.stallTimer = undefined;
      return;
    }
    if (moved || !this.stallTimer) this.movedAt = performance.now();
    if (!this.stallTimer) this.armStall(ms);
  }

  private armStall(waitMs: number): void {
    this.stallTimer = setTimeout(() => {
      this.stallTimer = undefined;
      const ms = this.consumer?.stallMs;
      if (this.closed || ms === undefined || this.outBytes <= WRITE_HIGH_WATER) return;
      const quiet = performance.now() - this.movedAt;
      if (quiet + 1 < ms) return this.armStall(ms - quiet);
      this.emit((h) => h.slowConsumer?.(`${this.outBytes} bytes unread, none taken for ${ms} ms`));
    }, waitMs);
    this.stallTimer.unref?.();
  }

  /** The bytes half of the slow-consumer rule, before a frame is queued: why it may not be, or undefined. */
  private overLimit(frame: Buffer): string | undefined {
    const c = this.consumer;
    if (!c || frame[1] === ERROR_TYPE) return undefined;
    const mine = this.outBytes;
    if (mine > c.perConnection) return `${mine} bytes unread on this connection (limit ${c.perConnection})`;
    if (mine > 0 && Channel.totalPendingBytes > c.total) return `${Channel.totalPendingBytes} bytes unread over all connections (limit ${c.total})`;
    return undefined;
  }

  private flushOut(): void {
    const wasHigh = this.outBytes > WRITE_HIGH_WATER;
    const totalBefore = this.outTotal;
    while (this.out.length > 0) {
      const chunk = this.out[0]!;
      const rest = this.outOffset ? chunk.subarray(this.outOffset) : chunk;
      const n = this.streamSend(rest);
      if (n < 0) return;
      this.outBytes -= n;
      Channel.totalPendingBytes -= n;
      this.outTotal += n;
      if (n < rest.length) {
        this.outOffset += n;
        break;
      }
      this.out.shift();
      this.outOffset = 0;
    }
    // Bytes moved into quiche: they leave in this drain (driver.ts Conn.deferAck).
    if (this.outTotal !== totalBefore) this.conn.mustSend = true;
    while (this.taken.length > 0 && this.taken[0]!.end <= this.outTotal) this.taken.shift()!.resolve();
    if (wasHigh || this.stallTimer) this.watchStall(this.outTotal !== totalBefore);
    if (wasHigh && this.outBytes <= WRITE_HIGH_WATER && this.streamId !== undefined) {
      if (this.waiting > 0) this.pump();
      else this.readControl(this.streamId);
    }
  }

  /** Queues one message on the control stream (ordered). */
  send(msg: Message): Promise<void> {
    return this.sendFrame(encodeFrame(msg));
  }

  /** Queues one frame encoded by the codec (`encodeFrame`) on the control stream (ordered). */
  sendFrame(frame: Buffer): Promise<void> {
    // No stream yet (the peer never opened one): the close code that follows carries the error.
    if (this.streamId === undefined || this.closed) return DONE;
    const over = this.overLimit(frame);
    if (over !== undefined) {
      this.emit((h) => h.slowConsumer?.(over));
      return DONE;
    }
    this.counters.framesOut++;
    this.counters.bytesOut += frame.length;
    return this.write(frame);
  }

  /** Closes the connection with a QUIC application code and reason (idempotent). */
  async close(code: number, reason: string): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.conn.close(true, code, reason);
    // Reports the end through `ended` (unless the connection had ended already).
    this.conn.ep.endLocal(this.conn, code, reason);
  }

  private finish(info: ChannelClose): void {
    if (this.closedInfo) return;
    this.closedInfo = info;
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.inbox = [];
    this.inboxHead = 0;
    this.dropOut();
    this.emit((h) => h.closed(info));
  }
}

export interface ListenOptions {
  host: string;
  port: number;
  cert: string;
  key: string;
  maxFrameBytes?: number;
  /** QUIC idle timeout: a silent peer is dropped after this long. */
  idleTimeoutMs?: number;
  /** A handshake not finished in this time is dropped. */
  handshakeTimeoutMs?: number;
  /** Bidirectional streams a peer may open (the first is the control stream). */
  maxStreams?: number;
  /** Write TLS secrets here for tshark/Wireshark (debugging only). */
  logKeys?: string;
  /** A new connection (handshake done); its control stream may not be open yet. */
  onChannel(channel: Channel): void;
  /** A second stream on a connection whose control stream exists. */
  onExtraStream?(channel: Channel): void;
  /**
   * QUIC handshakes in progress at once. An Initial packet that would start one more is
   * dropped (nothing is queued; the peer retries or times out) and `onHandshakeRefused` is told.
   */
  maxPendingHandshakes?: number;
  onHandshakeRefused?(remote: string): void;
  /**
   * Ask every client for a certificate (TLS CertificateRequest). The handshake completes with or
   * without one; `Channel.peerCertificates` carries what was presented, for an auth plugin to judge.
   */
  requestClientCert?: boolean;
  /** First Initials from loopback are accepted without a Retry round trip (driver.ts ServerSide). */
  loopbackWithoutRetry?: boolean;
  /**
   * The max_ack_delay announced (whole ms, default ACK_DELAY_MS, at most MAX_ACK_DELAY_MS; a
   * value that is no number gives the default). A longer one makes clients wait longer before
   * they probe; tests use it to hold a client's probe timeout off.
   */
  maxAckDelayMs?: number;
}

/** Signature algorithms offered (what BoringSSL supports of TLS 1.3's list). */
const SIGALGS = 'rsa_pkcs1_sha256:rsa_pkcs1_sha384:rsa_pkcs1_sha512:rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512:ecdsa_secp256r1_sha256:ecdsa_secp384r1_sha384:ecdsa_secp521r1_sha512:ed25519';

interface TransportParams {
  alpn: string;
  idleTimeoutMs: number;
  /** Bytes a peer may have in flight to us, per stream and in all. */
  streamWindow: number;
  connWindow: number;
  peerBidiStreams: number;
  logKeys: boolean;
  /** The max_ack_delay we announce (ms; default ACK_DELAY_MS). */
  maxAckDelayMs?: number;
}

/**
 * The max_ack_delay we announce. Our acknowledgements leave at the end of the event-loop turn
 * anyway; announcing 5 ms instead of 25 shortens the peer's probe timeout, so a lost check is
 * repaired well inside a check timeout (measured under 20% loss on loopback: p90 of a round trip
 * 101 -> 34-57 ms). A socket with receive moderation announces its hold on top (driver.ts holdMs).
 */
export const ACK_DELAY_MS = 5;
/** The largest max_ack_delay QUIC allows (2^14 ms, exclusive: RFC 9000 section 18.2). */
export const MAX_ACK_DELAY_MS = 16_383;

/** `ms` as whole ms within 0..max; `fallback` for a value that is no number of ms (NaN, Infinity). */
export function wholeMs(ms: number, max: number, fallback: number): number {
  return Number.isFinite(ms) ? Math.max(0, Math.min(max, Math.round(ms))) : fallback;
}

function tune(c: NativeConfig, p: TransportParams): NativeConfig {
  c.setApplicationProtos([p.alpn]);
  c.setMaxIdleTimeout(p.idleTimeoutMs);
  c.setMaxRecvUdpPayloadSize(quiche.MAX_DATAGRAM_SIZE);
  c.setMaxSendUdpPayloadSize(quiche.MAX_DATAGRAM_SIZE);
  c.setInitialMaxData(p.connWindow);
  c.setInitialMaxStreamDataBidiLocal(p.streamWindow);
  c.setInitialMaxStreamDataBidiRemote(p.streamWindow);
  c.setInitialMaxStreamDataUni(0);
  c.setInitialMaxStreamsBidi(p.peerBidiStreams);
  c.setInitialMaxStreamsUni(0);
  // Windows do not grow past what we announce: a peer cannot make us buffer more.
  c.setMaxStreamWindow(p.streamWindow);
  c.setMaxConnectionWindow(p.connWindow);
  c.setDisableActiveMigration(true);
  c.setActiveConnectionIdLimit(4);
  c.setMaxAckDelay(p.maxAckDelayMs ?? ACK_DELAY_MS);
  c.grease(true);
  if (p.logKeys) c.logKeys();
  return c;
}

function describeListenError(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'EADDRINUSE' ? 'address already in use' : code === 'EADDRNOTAVAIL' ? 'address not available on this host' : code === 'EACCES' ? 'permission denied' : errorText(e);
}

/** A bound QUIC endpoint accepting QHCP connections. */
export class Listener {
  private constructor(readonly endpoint: Endpoint) {}

  get host(): string {
    return this.endpoint.local.host;
  }
  get port(): number {
    return this.endpoint.local.port;
  }
  /** Driver counters (datagrams, retries, refusals), for metrics and tests. */
  get stats(): Readonly<DriverStats> {
    return this.endpoint.stats;
  }

  /** @throws LocalError QHCP_ERR_LISTEN */
  static async listen(opts: ListenOptions): Promise<Listener> {
    const maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    let config: NativeConfig;
    try {
      // verifyPeer on a server sends a CertificateRequest; failures allowed: BoringSSL only
      // collects the chain, the `verify` hook decides at HELLO (with a reason on the wire).
      const ask = opts.requestClientCert === true;
      config = quiche.Config.withBoringSslCtx(ask, ask, null, [Buffer.from(opts.key)], [Buffer.from(opts.cert)], SIGALGS);
    } catch (e) {
      throw new LocalError('QHCP_ERR_LISTEN', `cannot listen on ${opts.host}:${opts.port}: the certificate or key is not usable: ${errorText(e)}`, { cause: e });
    }
    tune(config, {
      alpn: ALPN,
      idleTimeoutMs: opts.idleTimeoutMs ?? 30_000,
      streamWindow: STREAM_WINDOW,
      connWindow: CONNECTION_WINDOW,
      peerBidiStreams: opts.maxStreams ?? 2,
      logKeys: opts.logKeys !== undefined,
      maxAckDelayMs: wholeMs(opts.maxAckDelayMs ?? ACK_DELAY_MS, MAX_ACK_DELAY_MS, ACK_DELAY_MS),
    });
    let ep: Endpoint;
    try {
      ep = await Endpoint.open(opts.host, opts.port);
    } catch (e) {
      throw new LocalError('QHCP_ERR_LISTEN', `cannot listen on ${opts.host}:${opts.port} (UDP): ${describeListenError(e)}`, { cause: e });
    }
    ep.server = {
      config,
      maxPendingHandshakes: opts.maxPendingHandshakes ?? Infinity,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 5_000,
      ...(opts.logKeys ? { keylog: opts.logKeys } : {}),
      accepted: (conn) => opts.onChannel(new Channel(conn, { maxFrameBytes }, opts.onExtraStream)),
      ...(opts.onHandshakeRefused ? { refused: opts.onHandshakeRefused } : {}),
      ...(opts.loopbackWithoutRetry ? { loopbackWithoutRetry: true } : {}),
    };
    return new Listener(ep);
  }

  /** Stops listening; open connections are closed with `code`. */
  async stop(code = 0, reason = 'shutting down'): Promise<void> {
    await this.endpoint.close(code, reason);
  }
}

/**
 * One UDP socket shared by many outgoing connections. A load balancer with a thousand
 * backends otherwise holds a thousand sockets, each with its own receive path and buffers.
 */
export class ClientSocket {
  private constructor(readonly endpoint: Endpoint) {}

  /** Binds an ephemeral UDP port on `host` ('::' = IPv4 and IPv6). */
  static async open(host = '::', opts: { holdMs?: number } = {}): Promise<ClientSocket> {
    const s = new ClientSocket(await Endpoint.open(host, 0));
    s.holdMs = opts.holdMs ?? 0;
    return s;
  }

  /**
   * Receive moderation (driver.ts `holdMs`; off at 0): with many connections on this socket it is
   * read at most once per `holdMs`. Connections opened from now on announce it in their
   * max_ack_delay (their acknowledgements may wait that long).
   */
  get holdMs(): number {
    return this.endpoint.holdMs;
  }

  /** Whole ms from 0 to MAX_HOLD_MS; anything else (negative, NaN) is off or clamped. */
  set holdMs(ms: number) {
    this.endpoint.holdMs = wholeMs(ms, MAX_HOLD_MS, 0);
  }

  /** The hold the socket applies now (driver.ts `moderationMs`: none below HOLD_MIN_CONNS connections). */
  get holdingMs(): number {
    return this.endpoint.moderationMs;
  }

  get port(): number {
    return this.endpoint.local.port;
  }

  get stats(): Readonly<DriverStats> {
    return this.endpoint.stats;
  }

  /** Whether a judgment due at `deadline` may be made: the socket has been read past it (driver.ts `Endpoint.readPast`). */
  readPast(deadline: number): boolean {
    return this.endpoint.readPast(deadline);
  }

  /** Runs `cb` once `readPast(deadline)` holds (driver.ts `Endpoint.whenReadPast`). */
  whenReadPast(deadline: number, cb: () => void): void {
    this.endpoint.whenReadPast(deadline, cb);
  }

  /** True when `host:port` answers a probe with ICMP port unreachable (nothing listens there; driver.ts `probePort`). */
  portClosed(host: string, port: number): Promise<boolean> {
    return this.endpoint.probePort(host, port);
  }

  async close(): Promise<void> {
    await this.endpoint.close(0, 'socket closed');
  }
}

export interface ConnectOptions {
  host: string;
  port: number;
  /** Name the certificate must carry; defaults to `host`. */
  serverName?: string;
  /** PEM CA bundle or pinned certificate; when absent the server certificate is not verified. */
  ca?: string;
  /** Handshake must finish within this. */
  timeoutMs?: number;
  idleTimeoutMs?: number;
  keepAliveMs?: number;
  maxFrameBytes?: number;
  logKeys?: string;
  /** Tests only: offer this ALPN instead of qhcp/1 (a wrong-ALPN peer). */
  alpn?: string;
  /** Tests only: build the channel as this subclass (test/helpers/raw-channel.ts: a peer that misbehaves). */
  channelType?: typeof Channel;
  /** Share this socket instead of binding one for the connection. */
  socket?: ClientSocket;
  /** Flow-control window we grant the server (bytes; default 256 KiB per stream). Tests: a slow reader. */
  receiveWindowBytes?: number;
  /** A client certificate (PEM chain, own first) and its key, presented when the server asks (mutual TLS). */
  clientCert?: { cert: string; key: string };
  /**
   * Acknowledgement deferral (driver.ts `Conn.ackDeferMs`; ms, 0 or absent: off), for a peer that
   * sends about one packet per period (a poll's answer, a pushed report): its packets are
   * acknowledged with our next request, or with its next packet, instead of each on its own.
   * Announced in max_ack_delay (on top of the usual delay and the socket's hold), so the peer's
   * probe timeout waits for it; a lost packet of the peer's is then repaired by a nudge
   * (`Channel.nudge`) and the server's echo, not by its probe timeout.
   */
  ackDeferMs?: number;
}

/** Client configurations (each holds a BoringSSL context), by their parameters. */
const clientConfigs = new Map<string, NativeConfig>();

/** A short id per distinct client certificate, for the configuration cache key (never reused). */
const identityIds = new Map<string, number>();
let lastIdentity = 0;

function clientConfig(verify: boolean, p: TransportParams, identity?: { cert: string; key: string }): NativeConfig {
  let id = 0;
  if (identity) {
    const k = `${identity.cert}\0${identity.key}`;
    id = identityIds.get(k) ?? ++lastIdentity;
    if (identityIds.size > 32) identityIds.clear();
    identityIds.set(k, id);
  }
  const key = `${verify}|${p.alpn}|${p.idleTimeoutMs}|${p.streamWindow}|${p.connWindow}|${p.logKeys}|${p.maxAckDelayMs}|${id}`;
  let c = clientConfigs.get(key);
  if (!c) {
    // verifyPeer with failures allowed: BoringSSL hands us the chain and `checkServerChain`
    // decides (tls.ts), after the handshake and before the connection is used.
    const keys = identity ? [Buffer.from(identity.key)] : null;
    const certs = identity ? [Buffer.from(identity.cert)] : null;
    try {
      c = tune(quiche.Config.withBoringSslCtx(verify, true, null, keys, certs, SIGALGS), p);
    } catch (e) {
      throw new LocalError('QHCP_ERR_CONNECT', `the client certificate or key is not usable: ${errorText(e)}`, { cause: e });
    }
    if (clientConfigs.size > 32) clientConfigs.clear();
    clientConfigs.set(key, c);
  }
  return c;
}

async function resolve(host: string): Promise<string> {
  if (isIP(host)) return host;
  try {
    return (await lookup(host)).address;
  } catch (e) {
    throw new LocalError('QHCP_ERR_CONNECT', `cannot connect to ${host}: cannot resolve the name: ${errorText(e)}`, { cause: e });
  }
}

/**
 * Opens a QUIC connection and its control stream.
 * @throws LocalError QHCP_ERR_CONNECT with the reason (timeout, refused, certificate)
 */
export async function connect(opts: ConnectOptions): Promise<Channel> {
  const serverName = opts.serverName ?? opts.host;
  const ca = opts.ca;
  const maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  const address = await resolve(opts.host);
  const fail = (why: string, cause?: unknown): LocalError => new LocalError('QHCP_ERR_CONNECT', `cannot connect to ${opts.host}:${opts.port}: ${why}`, cause ? { cause } : undefined);
  const deferMs = wholeMs(opts.ackDeferMs ?? 0, MAX_ACK_DELAY_MS - ACK_DELAY_MS - MAX_HOLD_MS, 0);
  // Before a socket is opened: an unusable client certificate fails here, with nothing to close.
  const config = clientConfig(ca !== undefined, {
    alpn: opts.alpn ?? ALPN,
    idleTimeoutMs: opts.idleTimeoutMs ?? 30_000,
    streamWindow: opts.receiveWindowBytes ?? STREAM_WINDOW,
    connWindow: opts.receiveWindowBytes ?? CONNECTION_WINDOW,
    peerBidiStreams: 0,
    logKeys: opts.logKeys !== undefined,
    maxAckDelayMs: Math.min(MAX_ACK_DELAY_MS, ACK_DELAY_MS + (opts.socket?.holdMs ?? 0) + deferMs),
  }, opts.clientCert);
  let ep: Endpoint;
  if (opts.socket) ep = opts.socket.endpoint;
  else {
    // A socket of its own, connected to the peer: ICMP port unreachable then fails it at once.
    try {
      ep = await Endpoint.open(isIPv4(address) ? '0.0.0.0' : '::', 0);
      await ep.connectTo({ host: address, port: opts.port });
    } catch (e) {
      throw fail(errorText(e), e);
    }
    ep.closeWhenIdle = true;
  }
  let conn: Conn;
  try {
    conn = ep.connect(serverName, { host: ep.peerAddress(address), port: opts.port }, config, opts.timeoutMs ?? 5_000, opts.logKeys);
  } catch (e) {
    if (!opts.socket) void ep.close();
    throw fail(errorText(e), e);
  }
  if (ca !== undefined) conn.verify = (chain) => checkServerChain(chain, ca, serverName);
  if (opts.keepAliveMs && opts.keepAliveMs < (opts.idleTimeoutMs ?? 30_000)) conn.keepAliveMs = opts.keepAliveMs;
  conn.ackDeferMs = deferMs;
  const end = await new Promise<ConnEnd | undefined>((resolveP) => {
    conn.events = { established: () => resolveP(undefined), progress: () => {}, ended: (e) => resolveP(e) };
  });
  if (end) {
    if (!opts.socket) void ep.close();
    throw fail(describeEnd(end, conn, opts.timeoutMs ?? 5_000));
  }
  return new (opts.channelType ?? Channel)(conn, { maxFrameBytes });
}

/**
 * What a TLS alert from the peer means, for the alerts an operator can act on. In TLS 1.3 a
 * client's handshake is done before the server has judged its certificate, so a refusal may
 * arrive as the connection's end after it was established.
 */
function peerTlsAlert(code: number): string | undefined {
  // 116 certificate_required: the server asks for a client certificate (mutual TLS).
  if (code === quiche.CRYPTO_ERROR_START + 116) return "the server requires a client certificate (TLS alert certificate_required) and none was presented: configure the mtls auth plugin's certFile and keyFile";
  return undefined;
}

function describeEnd(end: ConnEnd, conn: Conn, timeoutMs: number): string {
  if (conn.verifyProblem) return conn.verifyProblem;
  if (end.by === 'peer') {
    const alert = !end.isApp && peerTlsAlert(end.code);
    if (alert) return alert;
    if (!end.isApp && end.code >= quiche.CRYPTO_ERROR_START && end.code <= quiche.CRYPTO_ERROR_STOP) return 'the server rejected the TLS handshake';
    return `refused by peer (code ${end.code}${end.reason ? `: ${end.reason}` : ''})`;
  }
  if (end.by === 'idle') return `no handshake within ${Math.round(timeoutMs)} ms`;
  if (end.by === 'error' && end.code >= quiche.CRYPTO_ERROR_START && end.code <= quiche.CRYPTO_ERROR_STOP) return 'TLS verification failed';
  return end.reason;
}


