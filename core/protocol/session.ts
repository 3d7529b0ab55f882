/**
 * A session: one channel (connection + control stream) driven by one role's DFA. Every frame in
 * or out passes the DFA first. A received frame the DFA, the codec or the schema rejects is
 * answered with ERROR and the connection is closed; nothing else in the process is touched.
 * Timers (HELLO, response) are DFA events too.
 */
import { Dfa, CLIENT_TABLE, type DfaEvent, type Role, type State } from './dfa.ts';
import { ProtocolError, PeerError, LocalError, WIRE_ERRORS, type QhcpError } from '../errors.ts';
import type { Bodies, Message, MessageName, MessageOf } from './messages.ts';
import { Channel, type ChannelClose } from '../transport/quic.ts';
import { encodeFrame, HEADER_BYTES } from './codec.ts';

/**
 * `send:X` / `recv:X`, built once per message name: the DFA's keyed lookups then get the same
 * string every time (V8 hashes and internalizes it once) instead of a new one per message.
 */
const EVENTS = { send: Object.create(null) as Record<string, DfaEvent>, recv: Object.create(null) as Record<string, DfaEvent> };
function dfaEvent(kind: 'send' | 'recv', type: MessageName): DfaEvent {
  return (EVENTS[kind][type] ??= `${kind}:${type}`);
}

export type Direction = 'in' | 'out';

/** `D`: the session's own application state (`session.data`), e.g. what a load balancer asked for. */
export interface SessionOptions<D extends object = object> {
  role: Role;
  /** The initial `data` (default: an empty object, so D's fields should be optional). */
  data?: D;
  /** Server role: close a connection that sends no HELLO within this (ms). */
  helloTimeoutMs?: number;
  /** Called for every frame in either direction, after the DFA accepted it. */
  observe?: (dir: Direction, msg: Message, session: Session<D>) => void;
  /** Application handler for received messages (requests, pushes); runs after the DFA step. */
  onMessage: (msg: Message, session: Session<D>) => void;
  /** Called once when the session ends, with why. */
  onClose?: (why: SessionEnd, session: Session<D>) => void;
  /** Called when this side detects a peer violation (for counting and rate-limited logging). */
  onViolation?: (err: ProtocolError, session: Session<D>) => void;
  /**
   * Output the peer has not read yet, in bytes: past `perConnection` on this connection, or
   * `total` over every connection of the process, the next send fails the session with
   * ERROR 302 SLOW_CONSUMER instead of queueing more (docs/operations.md, "Limits").
   */
  unread?: { perConnection: number; total: number };
  /**
   * A peer we owe more than the channel's high-water mark (128 KiB) that reads none of it for
   * this long (ms) is closed with ERROR 302 SLOW_CONSUMER. Until then it is only held: we read
   * nothing more from it, so QUIC flow control stops its requests.
   */
  stallMs?: number;
  /**
   * Client side: requests `request` may have written and not yet answered. When set, PICK, STATUS
   * and HEALTH_REQUEST issued while others are outstanding are written at once, up to this many,
   * and the rest wait here in order (docs/protocol.md, "Pipelining and backpressure"); the server
   * answers in order and each answer must carry its request's `seq`. When not set, a request
   * while another is outstanding is refused.
   */
  pipeline?: number;
}

export interface SessionEnd {
  /** Who ended it and how: our ERROR, the peer's ERROR/close, an idle timeout, a clean end. */
  by: 'local' | 'peer' | 'idle' | 'error';
  /** Wire code (0 for a clean close). */
  code: number;
  reason: string;
  error?: QhcpError;
}

type Pending = {
  type: MessageName;
  body: unknown;
  expect: MessageName;
  seq: number | undefined;
  resolve: (m: Message) => void;
  reject: (e: Error) => void;
  timeoutMs: number;
  /** When its answer is late (performance.now() ms); Infinity until it is written. */
  deadline: number;
  /** Written to the wire (ahead of the DFA when pipelined: see `advance`). */
  written: boolean;
};

/** Requests a client may write while another is outstanding (answered in order by the server). */
const PIPELINABLE: ReadonlySet<MessageName> = new Set(['PICK', 'STATUS', 'HEALTH_REQUEST']);

/** Which response ends which request (for `request`). */
const RESPONSE_OF: Partial<Record<MessageName, MessageName>> = {
  HELLO: 'ACK',
  HEALTH_REQUEST: 'HEALTH_RESPONSE',
  CONFIG_UPDATE: 'CONFIG_ACK',
  PICK: 'PICK_RESPONSE',
  STATUS: 'STATUS_RESPONSE',
  // The first WATCH_UPDATE answers WATCH; later ones (same seq) are pushes.
  WATCH: 'WATCH_UPDATE',
  TERMINATE: 'TERMINATE_ACK',
};

let nextId = 1;

export class Session<D extends object = object> {
  readonly id = nextId++;
  readonly dfa: Dfa;
  /** Peer identity once HELLO/ACK told us (node name, auth subject). */
  peer: { node?: string; subject?: string; role?: string } = {};
  /** Per-session application state (e.g. the metrics a load balancer asked for). */
  readonly data: D;
  /**
   * Requests not yet answered, in order. The first is the one the DFA awaits; the ones after it
   * were written early (pipelined, up to `pipeline` written) or wait their turn to be written.
   */
  private readonly pending: Pending[] = [];
  /** One response timer for all of `pending`, armed for the first's deadline (re-checked when it fires). */
  private responseTimer: NodeJS.Timeout | undefined;
  private responseTimerAt = Infinity;
  /** Written-ahead requests allowed (`pipeline`); 0 when not set: a second request is refused. */
  private readonly pipelineDepth: number;
  private helloTimer: NodeJS.Timeout | undefined;
  private ended: SessionEnd | undefined;
  private readonly closeWaiters: Array<(e: SessionEnd) => void> = [];
  /** True once the peer sent DRAIN: it answers no more requests. */
  drained = false;
  /** When the peer last sent a frame (epoch ms): the idle limit after HELLO reads it. */
  lastReceivedAt = Date.now();
  /** Resolves once QUIC flow control has taken the last frame sent (see `written`). */
  private lastWrite: Promise<void> = Promise.resolve();

  constructor(
    readonly channel: Channel,
    private readonly opts: SessionOptions<D>,
  ) {
    this.data = opts.data ?? ({} as D);
    this.pipelineDepth = opts.pipeline === undefined ? 0 : Math.max(1, Math.floor(opts.pipeline));
    this.dfa = new Dfa(opts.role);
    if (opts.role === 'server') {
      const ms = opts.helloTimeoutMs ?? 5_000;
      this.helloTimer = setTimeout(() => this.timeout('hello', `no HELLO within ${ms} ms`), ms);
      this.helloTimer.unref?.();
    }
    channel.setHandler({
      message: (m) => this.receive(m),
      protocolError: (e) => this.violation(e),
      ended: () => this.end('peer', 0, 'control stream ended'),
      closed: (info) => this.onChannelClosed(info),
      slowConsumer: (why) => {
        const err = new ProtocolError('SLOW_CONSUMER', `the peer does not read its answers: ${why}`);
        this.opts.onViolation?.(err, this);
        this.fail(err);
      },
    });
    // One slow-consumer rule, kept by the channel, which knows what the peer owes (quic.ts ConsumerLimits).
    if (opts.unread) channel.consumer = { ...opts.unread, ...(opts.stallMs !== undefined ? { stallMs: opts.stallMs } : {}) };
  }

  /** The largest frame payload the peer accepts, when it said so in HELLO or ACK (`maxFrameBytes`). */
  peerMaxFrameBytes: number | undefined;

  get state(): State {
    return this.dfa.state;
  }
  get remote(): string {
    return this.channel.remote;
  }
  get isClosed(): boolean {
    return this.ended !== undefined;
  }

  /** Resolves when the session has ended. */
  closed(): Promise<SessionEnd> {
    if (this.ended) return Promise.resolve(this.ended);
    return new Promise((r) => this.closeWaiters.push(r));
  }

  /**
   * Sends a message after the DFA allows it.
   * @throws LocalError when this role may not send it now (a bug in the caller)
   */
  send<K extends MessageName>(type: K, body: Bodies[K]): void {
    if (this.ended) throw new LocalError('QHCP_ERR_CLOSED', `session closed; cannot send ${type}`);
    const msg = { type, body } as Message;
    // Encoded once: the frame's size is what the peer's limit is checked against.
    const frame = encodeFrame(msg);
    if (!this.admit(type, frame.length - HEADER_BYTES)) return;
    this.dfa.apply(dfaEvent('send', type));
    this.syncHold();
    this.opts.observe?.('out', msg, this);
    this.lastWrite = this.channel.sendFrame(frame);
  }

  /**
   * Whether `type` may go out under the peer's frame limit; when not, the session has failed
   * (FRAME_TOO_LARGE). What the peer has not read is the channel's rule (`slowConsumer`).
   */
  private admit(type: MessageName, size: number): boolean {
    // The peer said how large a frame it accepts (HELLO / ACK maxFrameBytes): never send more.
    if (type === 'ERROR' || this.peerMaxFrameBytes === undefined || size <= this.peerMaxFrameBytes) return true;
    this.fail(new ProtocolError('FRAME_TOO_LARGE', `${type} of ${size} bytes exceeds the peer's maxFrameBytes ${this.peerMaxFrameBytes}`));
    return false;
  }

  /**
   * Resolves once QUIC flow control has taken every frame sent so far (at once, unless the peer
   * is not reading): a sender of pushes waits on it rather than queue without bound.
   */
  written(): Promise<void> {
    return this.lastWrite;
  }

  /** Sends if the DFA allows it now; returns whether it did (for pushes that may race a close). */
  trySend<K extends MessageName>(type: K, body: Bodies[K]): boolean {
    if (this.ended || this.dfa.peek(dfaEvent('send', type)) === undefined) return false;
    this.send(type, body);
    return true;
  }

  /**
   * Client side: sends a request and resolves with its response, or rejects on timeout
   * (ProtocolError RESPONSE_TIMEOUT, after which the session is closed), on an ERROR from the
   * peer (PeerError) or when the session closes. With `pipeline` above 1, PICK, STATUS and
   * HEALTH_REQUEST issued while others are outstanding are written at once (up to `pipeline`
   * written) and answered in order; TERMINATE gives up every request still outstanding.
   */
  request<K extends keyof typeof RESPONSE_OF & MessageName>(type: K, body: Bodies[K], timeoutMs: number): Promise<Message> {
    const expect = RESPONSE_OF[type]!;
    return new Promise<Message>((resolve, reject) => {
      if (this.ended) return reject(this.endError());
      const seq = (body as { seq?: number }).seq;
      const p: Pending = { type, body, expect, seq, resolve, reject, timeoutMs, deadline: Infinity, written: false };
      if (this.pending.length > 0) {
        if (type === 'TERMINATE' && this.pipelineDepth > 0) {
          // Sent now (the DFA allows it while a request is outstanding); the answers still coming are read and dropped.
          this.abandon(new LocalError('QHCP_ERR_CLOSED', 'the session is terminating'));
        } else if (this.pipelineDepth === 0 || !PIPELINABLE.has(type) || !PIPELINABLE.has(this.pending[0]!.type)) {
          return reject(new LocalError('QHCP_ERR_CLOSED', `a ${this.pending[0]!.expect} is already awaited`));
        } else if (CLIENT_TABLE.READY[dfaEvent('send', type)] === undefined || this.drained) {
          return reject(new LocalError('QHCP_ERR_CLOSED', `${type} cannot be sent in state ${this.dfa.state}`));
        } else {
          this.pending.push(p);
          this.writeAhead();
          return;
        }
      }
      this.pending.push(p);
      try {
        this.send(type, body);
      } catch (e) {
        this.pending.pop();
        return reject(e as Error);
      }
      if (this.pending[0] !== p) return; // the send failed the session (and rejected it)
      this.markWritten(p);
    });
  }

  /** Writes waiting pipelined requests, up to `pipeline` written; their DFA step comes in `advance`. */
  private writeAhead(): void {
    const n = Math.min(this.pending.length, this.pipelineDepth);
    for (let i = 1; i < n; i++) {
      const p = this.pending[i]!;
      if (p.written) continue;
      const frame = encodeFrame({ type: p.type, body: p.body } as Message);
      if (!this.admit(p.type, frame.length - HEADER_BYTES)) return;
      this.markWritten(p);
      this.lastWrite = this.channel.sendFrame(frame);
    }
  }

  private markWritten(p: Pending): void {
    p.written = true;
    p.deadline = performance.now() + p.timeoutMs;
    if (p.deadline < this.responseTimerAt) this.armResponseTimer(p.deadline);
  }

  private armResponseTimer(at: number): void {
    if (this.responseTimer) clearTimeout(this.responseTimer);
    this.responseTimerAt = at;
    this.responseTimer = setTimeout(this.onResponseTimer, Math.max(0, at - performance.now()));
  }

  /** The earliest deadline of a written request, checked; re-armed for the next when none is late. */
  private readonly onResponseTimer = (): void => {
    this.responseTimer = undefined;
    this.responseTimerAt = Infinity;
    let next = Infinity;
    const now = performance.now();
    for (const p of this.pending) {
      if (!p.written) break;
      if (p.deadline <= now + 1) {
        // The answer may be in our socket, unread because this process was late (a stall, a
        // starved CPU): judged once the socket has been read past the deadline (quic.ts Channel.readPast).
        if (!this.channel.readPast(p.deadline)) return this.channel.whenReadPast(p.deadline, this.recheckResponses);
        return this.timeout('response', `no ${p.expect} within ${p.timeoutMs} ms`);
      }
      if (p.deadline < next) next = p.deadline;
    }
    if (next !== Infinity) this.armResponseTimer(next);
  };

  /** After the read a late answer waited for: the deadlines again, from the start. */
  private readonly recheckResponses = (): void => {
    if (this.ended) return;
    if (this.responseTimer) clearTimeout(this.responseTimer);
    this.onResponseTimer();
  };

  /**
   * The first request was answered: the next one (written already when pipelined) takes its DFA
   * step now, so the DFA sees send, answer, send, answer as the server does.
   */
  private advance(): void {
    this.pending.shift();
    if (this.pending.length === 0) {
      if (this.responseTimer) clearTimeout(this.responseTimer);
      this.responseTimer = undefined;
      this.responseTimerAt = Infinity;
      return;
    }
    const next = this.pending[0]!;
    if (next.written) {
      const msg = { type: next.type, body: next.body } as Message;
      if (this.dfa.peek(dfaEvent('send', next.type)) === undefined) {
        return this.abandon(new LocalError('QHCP_ERR_CLOSED', `${next.type} cannot be sent in state ${this.dfa.state}`));
      }
      this.dfa.apply(dfaEvent('send', next.type));
      this.opts.observe?.('out', msg, this);
    } else {
      try {
        this.send(next.type, next.body as never);
      } catch (e) {
        this.pending.shift();
        next.reject(e as Error);
        return;
      }
      if (this.pending[0] !== next) return;
      this.markWritten(next);
    }
    this.writeAhead();
  }

  /** Rejects every outstanding request with `err` (the peer drains, or we terminate). */
  private abandon(err: Error): void {
    const all = this.pending.splice(0);
    if (this.responseTimer) clearTimeout(this.responseTimer);
    this.responseTimer = undefined;
    this.responseTimerAt = Infinity;
    for (const p of all) p.reject(err);
  }

  /** Ends the session with ERROR `err` to the peer (when the DFA still allows sending). */
  fail(err: ProtocolError): void {
    if (this.ended) return;
    this.trySend('ERROR', { code: err.wire, reason: err.message.slice(0, 1000) });
    this.dfa.close();
    void this.channel.close(err.wire, err.message);
    this.end('local', err.wire, err.message, err);
  }

  /** Ends the session cleanly with close code 0. */
  close(reason = 'closed'): void {
    if (this.ended) return;
    this.dfa.close();
    void this.channel.close(0, reason);
    this.end('local', 0, reason);
  }

  private receive(msg: Message): void {
    if (this.ended) return;
    this.lastReceivedAt = Date.now();
    try {
      this.dfa.apply(dfaEvent('recv', msg.type));
    } catch (e) {
      return this.violation(e as ProtocolError);
    }
    this.syncHold();
    if (msg.type === 'HELLO' && this.helloTimer) {
      clearTimeout(this.helloTimer);
      this.helloTimer = undefined;
    }
    this.opts.observe?.('in', msg, this);
    if (msg.type === 'ERROR') {
      const err = new PeerError(msg.body.code, msg.body.reason);
      void this.channel.close(0, 'peer sent ERROR');
      return this.end('peer', msg.body.code, msg.body.reason, err);
    }
    if (msg.type === 'DRAIN') {
      // The peer drops requests that crossed its DRAIN (docs/protocol.md, "DRAIN"): stop waiting.
      this.drained = true;
      const d = this.pending[0];
      if (d) this.abandon(new LocalError('QHCP_ERR_CLOSED', `no ${d.expect} will come: the peer is draining`));
    }
    const p = this.pending[0];
    if (p && msg.type === p.expect) {
      if (p.seq !== undefined && (msg.body as { seq?: number }).seq !== p.seq) {
        return this.violation(new ProtocolError('INVALID_MESSAGE', `${msg.type} seq ${(msg.body as { seq?: number }).seq} does not answer request seq ${p.seq}`));
      }
      this.advance();
      p.resolve(msg);
    }
    this.opts.onMessage(msg, this);
    if (msg.type === 'TERMINATE_ACK') this.close('terminated');
  }

  /**
   * Server side: while a request is being answered (HELLO being authenticated, or a request in a
   * *_PENDING state), the channel delivers no further frame. Pipelined requests are so answered
   * one at a time and in order, and a peer that sends faster than it reads is held by QUIC flow
   * control instead of growing our queues (docs/protocol.md, "Requests and seq").
   */
  private syncHold(): void {
    if (this.opts.role !== 'server') return;
    const st = this.dfa.state;
    this.channel.hold(st === 'AUTH' || st.endsWith('_PENDING'));
  }

  private violation(err: ProtocolError): void {
    if (this.ended) return;
    this.opts.onViolation?.(err, this);
    this.fail(err);
  }

  private timeout(which: 'hello' | 'response', text: string): void {
    if (this.ended) return;
    const err = new ProtocolError(which === 'hello' ? 'HELLO_TIMEOUT' : 'RESPONSE_TIMEOUT', text);
    // The timeout is a DFA event; it leads to CLOSED, where ERROR can no longer be sent, so
    // send the ERROR first while the state still allows it.
    this.trySend('ERROR', { code: err.wire, reason: text });
    this.dfa.close();
    void this.channel.close(err.wire, text);
    this.end('local', err.wire, text, err);
  }

  private onChannelClosed(info: ChannelClose): void {
    const err = info.by === 'peer' && info.code !== 0 ? new PeerError(info.code, info.reason) : undefined;
    this.end(info.by, info.code, info.reason, err);
  }

  private endError(): QhcpError {
    const e = this.ended!;
    if (e.error) return e.error;
    return new LocalError('QHCP_ERR_CLOSED', `session closed (${e.by}): ${e.reason}`);
  }

  private end(by: SessionEnd['by'], code: number, reason: string, error?: QhcpError): void {
    if (this.ended) return;
    this.ended = { by, code, reason, ...(error ? { error } : {}) };
    this.dfa.close();
    if (this.helloTimer) clearTimeout(this.helloTimer);
    if (this.pending.length > 0) this.abandon(this.endError());
    if (by !== 'local') void this.channel.close(0, 'peer closed');
    this.opts.onClose?.(this.ended, this);
    for (const w of this.closeWaiters.splice(0)) w(this.ended);
  }
}

/** Server-side sessions still waiting for (or authenticating) their HELLO: pending handshakes. */
export function preHello(sessions: Iterable<Session>): number {
  let n = 0;
  for (const s of sessions) if (s.state === 'AWAIT_HELLO' || s.state === 'AUTH') n++;
  return n;
}

/** The wire code's name for logs ("UNEXPECTED_MESSAGE"), or the number. */
export function codeName(code: number): string {
  const hit = Object.entries(WIRE_ERRORS).find(([, v]) => v.wire === code);
  return hit ? hit[0] : String(code);
}

export type { MessageOf };
