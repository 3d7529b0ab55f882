/**
 * A raw QHCP peer for robustness tests: a QUIC connection and control stream with no session
 * and no DFA, so it can send anything (bytes, out-of-order frames, extra streams, resets) and
 * record exactly what the other side answers and how it closes the connection.
 */
import { ClientSocket, type ChannelClose } from '../../core/transport/quic.ts';
import { connectRaw, type RawChannel } from './raw-channel.ts';
import { encodeFrame, HEADER_BYTES } from '../../core/protocol/codec.ts';
import { MESSAGE_TYPES, type Message, type MessageName } from '../../core/protocol/messages.ts';
import type { ProtocolError } from '../../core/errors.ts';
import { waitUntil } from './procs.ts';

export interface RawPeerOptions {
  host?: string;
  port: number;
  /** Offer this ALPN instead of qhcp/1 (wrong-ALPN tests). */
  alpn?: string;
  timeoutMs?: number;
  idleTimeoutMs?: number;
  keepAliveMs?: number;
  /** Flow-control window granted to the other side (a slow reader fills it quickly). */
  receiveWindowBytes?: number;
  /** Bind the connection's UDP socket to this local address (e.g. 127.0.0.2: another source). */
  localHost?: string;
}

/** Encodes a frame with any header and payload: type byte, raw payload, optional lying length. */
export function rawFrame(type: number, payload: string | Uint8Array, opts: { version?: number; length?: number } = {}): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : Buffer.from(payload);
  const header = Buffer.alloc(HEADER_BYTES);
  header[0] = opts.version ?? 1;
  header[1] = type;
  header.writeUInt32BE(opts.length ?? body.length, 2);
  return Buffer.concat([header, body]);
}

/** A frame of a known type with an arbitrary (possibly invalid) JSON body. */
export function frameOf(type: MessageName, body: unknown): Buffer {
  return rawFrame(MESSAGE_TYPES[type], JSON.stringify(body));
}

export const HELLO_CHECKER = () => encodeFrame({ type: 'HELLO', body: { versions: [1], role: 'checker', node: 'raw-peer' } });
export const HELLO_QUERY = () => encodeFrame({ type: 'HELLO', body: { versions: [1], role: 'query', node: 'raw-peer' } });

export class RawPeer {
  /** Every message the other side sent, decoded. */
  readonly received: Message[] = [];
  /** Framing errors in what the other side sent (should stay empty). */
  readonly decodeErrors: ProtocolError[] = [];
  closeInfo: ChannelClose | undefined;
  readonly closed: Promise<ChannelClose>;

  private constructor(readonly channel: RawChannel) {
    this.closed = new Promise<ChannelClose>((resolve) =>
      channel.setHandler({
        message: (m) => this.received.push(m),
        protocolError: (e) => this.decodeErrors.push(e),
        ended: () => {},
        closed: (info) => {
          this.closeInfo = info;
          resolve(info);
        },
      }),
    );
  }

  /** Connects (QUIC handshake + control stream). @throws LocalError QHCP_ERR_CONNECT */
  static async open(opts: RawPeerOptions): Promise<RawPeer> {
    const socket = opts.localHost ? await ClientSocket.open(opts.localHost) : undefined;
    const ch = await connectRaw({
      host: opts.host ?? '127.0.0.1',
      port: opts.port,
      timeoutMs: opts.timeoutMs ?? 5000,
      ...(opts.alpn ? { alpn: opts.alpn } : {}),
      ...(opts.idleTimeoutMs ? { idleTimeoutMs: opts.idleTimeoutMs } : {}),
      ...(opts.keepAliveMs !== undefined ? { keepAliveMs: opts.keepAliveMs } : {}),
      ...(opts.receiveWindowBytes ? { receiveWindowBytes: opts.receiveWindowBytes } : {}),
      ...(socket ? { socket } : {}),
    }).catch(async (e: unknown) => {
      await socket?.close();
      throw e;
    });
    const peer = new RawPeer(ch);
    if (socket) void peer.closed.then(() => setTimeout(() => void socket.close(), 100));
    return peer;
  }

  get isClosed(): boolean {
    return this.closeInfo !== undefined;
  }

  /** Writes bytes as they are. */
  send(bytes: Uint8Array): Promise<void> {
    return this.channel.sendRaw(bytes);
  }

  /** Writes `bytes` one byte per write, `gapMs` apart (a trickled frame). */
  async trickle(bytes: Uint8Array, gapMs: number): Promise<void> {
    for (let i = 0; i < bytes.length && !this.isClosed; i++) {
      await this.channel.sendRaw(bytes.subarray(i, i + 1));
      if (gapMs > 0) await new Promise((r) => setTimeout(r, gapMs));
    }
  }

  /** The first ERROR the other side sent, if any. */
  get error(): { code: number; reason: string } | undefined {
    const e = this.received.find((m) => m.type === 'ERROR');
    return e?.type === 'ERROR' ? e.body : undefined;
  }

  /** Waits for the connection to close; resolves with the ERROR code sent (or the close code). */
  async closedWith(timeoutMs = 10_000): Promise<{ code: number; reason: string; close: ChannelClose }> {
    const close = await Promise.race([
      this.closed,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`raw peer not closed within ${timeoutMs} ms; got ${JSON.stringify(this.received.map((m) => m.type))}`)), timeoutMs).unref()),
    ]);
    const err = this.error;
    return { code: err?.code ?? close.code, reason: err?.reason ?? close.reason, close };
  }

  /** Waits until a message of `type` has arrived (bounded). */
  async waitFor(type: MessageName, timeoutMs = 10_000): Promise<Message> {
    return waitUntil(() => this.received.find((m) => m.type === type), timeoutMs, `${type} from peer (got ${this.received.map((m) => m.type).join(',') || 'nothing'})`, 20);
  }

  /** Opens a second bidirectional stream and writes `bytes` on it. */
  openExtraStream(bytes: Uint8Array = HELLO_CHECKER()): Promise<void> {
    return this.channel.openExtraStream(bytes);
  }

  /** Resets (RESET_STREAM) the control stream's sending side. */
  resetStream(): Promise<void> {
    return this.channel.resetStream();
  }

  /** Closes the connection from our side (idempotent). */
  close(): Promise<void> {
    return this.channel.close(0, 'raw peer done');
  }
}
