/**
 * The transport: the only file that imports @matrixai/quic. It listens, connects, carries one
 * bidirectional control stream per connection, turns its bytes into messages (codec.ts), and
 * maps the library's close events and errors to one `ChannelClose` the session layer reads.
 * Peer misbehaviour closes that one connection; nothing here throws into the process.
 */
import { randomBytes, randomFillSync, createHmac, timingSafeEqual } from 'node:crypto';
import { QUICServer, QUICClient, QUICSocket, events as qev, errors as qerr } from '@matrixai/quic';
import type { QUICConnection, QUICStream } from '@matrixai/quic';
import QuicLogger, { LogLevel } from '@matrixai/logger';
import { FrameDecoder, encodeFrame, DEFAULT_MAX_FRAME_BYTES } from '../protocol/codec.ts';
import { ProtocolError, LocalError, errorText } from '../errors.ts';
import type { Message } from '../protocol/messages.ts';
import { checkServerChain } from './tls.ts';

/** ALPN protocol id of QHCP version 1. */
export const ALPN = 'qhcp/1';

/** TLS alert codes (RFC 8446) offset by 0x100, as QUIC carries them. */
const TLS_BAD_CERTIFICATE = 0x100 + 42;

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
  closed(info: ChannelClose): void;
}

export interface ChannelLimits {
  maxFrameBytes: number;
}

const quicLogger = new QuicLogger('quic', process.env.QHCP_QUIC_LOG === 'debug' ? LogLevel.DEBUG : LogLevel.ERROR);

/** One QUIC connection and its control stream. */
export class Channel {
  private stream: QUICStream | undefined;
  private writer: WritableStreamDefaultWriter<Uint8Array> | undefined;
  private readonly decoder: FrameDecoder;
  private closing = false;
  private closedInfo: ChannelClose | undefined;
  private handler: ChannelHandler | undefined;
  private early: Array<() => void> = [];
  /** Bytes and frames received and sent, for metrics. */
  readonly counters = { framesIn: 0, framesOut: 0, bytesIn: 0, bytesOut: 0 };
  /** Bytes queued by `send` that the QUIC library has not taken yet (the peer is not reading). */
  pendingBytes = 0;
  /** The same, summed over every channel in this process. */
  static totalPendingBytes = 0;

  constructor(
    private readonly conn: QUICConnection,
    private readonly destroyer: (code: number, reason: Uint8Array) => Promise<void>,
    limits: ChannelLimits,
  ) {
    this.decoder = new FrameDecoder(limits.maxFrameBytes);
    conn.addEventListener(qev.EventQUICConnectionError.name, this.onConnError as EventListener);
    conn.closedP.then(
      () => this.finish({ by: 'error', code: 0, reason: 'connection closed' }),
      () => this.finish({ by: 'error', code: 0, reason: 'connection closed' }),
    );
  }

  get remote(): string {
    const host = this.conn.remoteHost as string;
    return `${host.includes(':') ? `[${host}]` : host}:${this.conn.remotePort}`;
  }

  get closed(): boolean {
    return this.closing || this.closedInfo !== undefined;
  }

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

  /** Makes `stream` the control stream and starts reading it. */
  attach(stream: QUICStream): void {
    this.stream = stream;
    this.writer = stream.writable.getWriter();
    this.writer.closed.catch(() => {});
    void this.pump(stream);
  }

  get hasStream(): boolean {
    return this.stream !== undefined;
  }

  private async pump(stream: QUICStream): Promise<void> {
    const reader = stream.readable.getReader();
    try {
      for (;;) {
        if (this.readGate) await this.readGate;
        const { value, done } = await reader.read();
        if (this.closed) return;
        if (done) {
          this.decoder.end();
          this.emit((h) => h.ended());
          return;
        }
        this.counters.bytesIn += value.length;
        const messages = this.decoder.push(value);
        let n = 0;
        for (const m of messages) {
          if (this.closed) return;
          this.counters.framesIn++;
          this.emit((h) => h.message(m));
          // Fairness: one read can hold thousands of frames; let other connections' I/O in
          // between so a flooding peer cannot starve honest ones.
          if (++n % 32 === 0) await new Promise<void>((r) => setImmediate(r));
        }
        // Backpressure: a peer that sends requests but never reads the answers would otherwise
        // grow our write queue without bound. Read on only once what we owe it has been taken.
        if (this.writer && (this.writer.desiredSize ?? 1) <= 0) await this.writer.ready.catch(() => {});
      }
    } catch (e) {
      if (this.closed) return;
      if (e instanceof ProtocolError) {
        this.emit((h) => h.protocolError(e));
      } else if (this.decoder.bufferedBytes > 0) {
        this.emit((h) => h.protocolError(new ProtocolError('TRUNCATED_FRAME', `control stream reset inside a frame: ${errorText(e)}`)));
      } else {
        // Stream reset on a frame boundary or the connection went away: the close event follows.
        this.emit((h) => h.ended());
      }
    } finally {
      try {
        reader.releaseLock();
      } catch {
        /* already released */
      }
    }
  }

  /** Queues one message on the control stream (ordered). Returns when the library took it. */
  async send(msg: Message): Promise<void> {
    // No stream yet (the peer never opened one): the close code that follows carries the error.
    if (!this.writer || this.closed) return;
    const frame = encodeFrame(msg);
    this.counters.framesOut++;
    this.counters.bytesOut += frame.length;
    this.pendingBytes += frame.length;
    Channel.totalPendingBytes += frame.length;
    try {
      await this.writer.write(frame);
    } catch {
      /* the connection is going away; its close event tells the session */
    } finally {
      this.pendingBytes -= frame.length;
      Channel.totalPendingBytes -= frame.length;
    }
  }

  /**
   * Writes bytes as they are, bypassing codec and DFA. For tests and fuzzing of peers only:
   * the production paths always go through `send`.
   */
  async sendRaw(bytes: Uint8Array): Promise<void> {
    if (!this.writer) throw new LocalError('QHCP_ERR_CLOSED', 'no control stream');
    try {
      await this.writer.write(bytes);
    } catch {
      /* the connection is going away */
    }
  }

  private readGate: Promise<void> | undefined;
  /** Tests only: stops reading the control stream for good (a peer that never reads its answers). */
  pauseReading(): void {
    this.readGate ??= new Promise<void>(() => {});
  }

  /** Tests only: opens a second bidirectional stream and writes `bytes` on it (EXTRA_STREAM). */
  async openExtraStream(bytes: Uint8Array): Promise<void> {
    try {
      const w = this.conn.newStream('bidi').writable.getWriter();
      await w.write(bytes);
      w.releaseLock();
    } catch {
      /* the peer refused or the connection is going away */
    }
  }

  /** Tests only: resets the control stream's sending side (RESET_STREAM), e.g. inside a frame. */
  async resetStream(): Promise<void> {
    try {
      await this.writer?.abort(new Error('reset by test'));
    } catch {
      /* already closed */
    }
  }

  /** Closes the connection with a QUIC application code and reason (idempotent). */
  async close(code: number, reason: string): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const reasonBytes = Buffer.from(reason.slice(0, 200), 'utf8');
    try {
      await this.destroyer(code, reasonBytes);
    } catch {
      /* already closed underneath us */
    }
    this.finish({ by: 'local', code, reason });
  }

  private readonly onConnError = (evt: Event & { detail?: unknown }): void => {
    const e = evt.detail;
    const data = (e as { data?: { errorCode?: number; reason?: Uint8Array; isApp?: boolean } } | undefined)?.data;
    const reason = data?.reason ? Buffer.from(data.reason).toString('utf8') : errorText(e);
    if (e instanceof qerr.ErrorQUICConnectionIdleTimeout) {
      this.finish({ by: 'idle', code: 0, reason: 'idle timeout' });
    } else if (e instanceof qerr.ErrorQUICConnectionPeer) {
      this.finish({ by: 'peer', code: data?.isApp ? (data.errorCode ?? 0) : 0, reason: reason || 'peer closed' });
    } else if (e instanceof qerr.ErrorQUICConnectionLocal) {
      // The library reports some peer application closes (e.g. a refusal right after the
      // handshake) as local errors; an application code we did not send came from the peer.
      this.finish({ by: this.closing ? 'local' : data?.isApp ? 'peer' : 'error', code: data?.errorCode ?? 0, reason });
    } else {
      this.finish({ by: 'error', code: 0, reason });
    }
    if (!this.closing) {
      this.closing = true;
      this.destroyer(0, new Uint8Array()).catch(() => {});
    }
  };

  private finish(info: ChannelClose): void {
    if (this.closedInfo) return;
    this.closedInfo = info;
    this.conn.removeEventListener(qev.EventQUICConnectionError.name, this.onConnError as EventListener);
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
}

/** A bound QUIC endpoint accepting QHCP connections. */
export class Listener {
  private constructor(private readonly server: QUICServer) {}

  get host(): string {
    return this.server.host as string;
  }
  get port(): number {
    return this.server.port as number;
  }

  /** @throws LocalError QHCP_ERR_LISTEN */
  static async listen(opts: ListenOptions): Promise<Listener> {
    const maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    const hmacKey = randomBytes(32);
    const hmac = (key: ArrayBuffer, data: ArrayBuffer) => createHmac('sha256', Buffer.from(key)).update(Buffer.from(data)).digest();
    const server = new QUICServer({
      crypto: {
        key: hmacKey.buffer.slice(hmacKey.byteOffset, hmacKey.byteOffset + hmacKey.byteLength) as ArrayBuffer,
        ops: {
          sign: async (key, data) => {
            const d = hmac(key, data);
            return d.buffer.slice(d.byteOffset, d.byteOffset + d.byteLength) as ArrayBuffer;
          },
          verify: async (key, data, sig) => {
            const d = hmac(key, data);
            const s = Buffer.from(sig);
            return s.length === d.length && timingSafeEqual(d, s);
          },
        },
      },
      config: {
        key: opts.key,
        cert: opts.cert,
        applicationProtos: [ALPN],
        verifyPeer: false,
        maxIdleTimeout: opts.idleTimeoutMs ?? 30_000,
        initialMaxStreamsBidi: opts.maxStreams ?? 2,
        initialMaxStreamsUni: 0,
        initialMaxData: 1024 * 1024,
        initialMaxStreamDataBidiRemote: Math.max(256 * 1024, maxFrameBytes * 2),
        initialMaxStreamDataBidiLocal: Math.max(256 * 1024, maxFrameBytes * 2),
        ...(opts.logKeys ? { logKeys: opts.logKeys } : {}),
      },
      minIdleTimeout: opts.handshakeTimeoutMs ?? 5_000,
      logger: quicLogger,
    });
    server.addEventListener(qev.EventQUICServerError.name, () => {});
    capHandshakes(server, opts.maxPendingHandshakes ?? Infinity, opts.onHandshakeRefused);
    server.addEventListener(qev.EventQUICServerConnection.name, ((evt: Event & { detail: QUICConnection }) => {
      const conn = evt.detail;
      const channel = new Channel(conn, (code, reason) => conn.stop({ isApp: true, errorCode: code, reason, force: true }), { maxFrameBytes });
      conn.addEventListener(qev.EventQUICConnectionStream.name, ((e: Event & { detail: QUICStream }) => {
        const stream = e.detail;
        if (!channel.hasStream && stream.type === 'bidi') channel.attach(stream);
        else {
          stream.cancel(new Error('extra stream'));
          opts.onExtraStream?.(channel);
        }
      }) as EventListener);
      opts.onChannel(channel);
    }) as EventListener);
    try {
      await server.start({ host: opts.host, port: opts.port });
    } catch (e) {
      const code = (e as { cause?: NodeJS.ErrnoException }).cause?.code ?? (e as NodeJS.ErrnoException).code;
      const why = code === 'EADDRINUSE' ? 'address already in use' : code === 'EADDRNOTAVAIL' ? 'address not available on this host' : code === 'EACCES' ? 'permission denied' : errorText(e);
      throw new LocalError('QHCP_ERR_LISTEN', `cannot listen on ${opts.host}:${opts.port} (UDP): ${why}`, { cause: e });
    }
    return new Listener(server);
  }

  /** Stops listening; open connections are closed with `code`. */
  async stop(code = 0, reason = 'shutting down'): Promise<void> {
    try {
      await this.server.stop({ isApp: true, errorCode: code, reason: Buffer.from(reason), force: true });
    } catch {
      /* already stopped */
    }
  }
}

/**
 * Bounds the QUIC handshakes a server runs at once. @matrixai/quic has no option for it, so
 * this wraps the server's (internal) `acceptConnection`, which QUICSocket calls for every
 * packet that belongs to no known connection and which resolves once the handshake is over
 * or has timed out (`minIdleTimeout`).
 */
function capHandshakes(server: QUICServer, max: number, refused?: (remote: string) => void): void {
  if (!Number.isFinite(max)) return;
  type Accept = (remote: { host: string; port: number }, ...rest: unknown[]) => Promise<unknown>;
  const target = server as unknown as { acceptConnection: Accept };
  const accept = target.acceptConnection.bind(server) as Accept;
  let inFlight = 0;
  target.acceptConnection = async (remote, ...rest) => {
    if (inFlight >= max) {
      refused?.(`${remote.host}:${remote.port}`);
      return undefined;
    }
    inFlight++;
    try {
      return await accept(remote, ...rest);
    } finally {
      inFlight--;
    }
  };
}

/**
 * One UDP socket shared by many outgoing connections. A load balancer with a thousand
 * backends otherwise holds a thousand sockets, each with its own receive path and buffers.
 */
export class ClientSocket {
  private constructor(readonly socket: QUICSocket) {}

  /** Binds an ephemeral UDP port on `host` ('::' = IPv4 and IPv6). */
  static async open(host = '::'): Promise<ClientSocket> {
    const socket = new QUICSocket({ logger: quicLogger });
    await socket.start({ host, port: 0 });
    return new ClientSocket(socket);
  }

  get port(): number {
    return this.socket.port as number;
  }

  async close(): Promise<void> {
    try {
      await this.socket.stop({ force: true });
    } catch {
      /* already stopped */
    }
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
  /** Share this socket instead of binding one for the connection. */
  socket?: ClientSocket;
  /** Flow-control window we grant the server (bytes; default the library's 1 MiB). Tests: a slow reader. */
  receiveWindowBytes?: number;
}

/**
 * Opens a QUIC connection and its control stream.
 * @throws LocalError QHCP_ERR_CONNECT with the reason (timeout, refused, certificate)
 */
export async function connect(opts: ConnectOptions): Promise<Channel> {
  const serverName = opts.serverName ?? opts.host;
  const ca = opts.ca;
  const idle = opts.idleTimeoutMs ?? 30_000;
  let certProblem: string | undefined;
  let client: QUICClient;
  try {
    client = await QUICClient.createQUICClient(
      {
        host: opts.host,
        port: opts.port,
        ...(opts.socket ? { socket: opts.socket.socket } : {}),
        crypto: { ops: { randomBytes: async (data: ArrayBuffer) => void randomFillSync(new Uint8Array(data)) } },
        config: {
          applicationProtos: [opts.alpn ?? ALPN],
          verifyPeer: ca !== undefined,
          ...(ca !== undefined
            ? {
                verifyCallback: async (certs: Uint8Array[]) => {
                  certProblem = checkServerChain(certs, ca, serverName);
                  return certProblem ? TLS_BAD_CERTIFICATE : undefined;
                },
              }
            : {}),
          maxIdleTimeout: idle,
          ...(opts.keepAliveMs && opts.keepAliveMs < idle ? { keepAliveIntervalTime: opts.keepAliveMs } : {}),
          initialMaxStreamsBidi: 0,
          initialMaxStreamsUni: 0,
          ...(opts.receiveWindowBytes ? { initialMaxStreamDataBidiLocal: opts.receiveWindowBytes, initialMaxData: opts.receiveWindowBytes } : {}),
          ...(opts.logKeys ? { logKeys: opts.logKeys } : {}),
        } as never,
        logger: quicLogger,
      },
      { timer: opts.timeoutMs ?? 5_000 },
    );
  } catch (e) {
    const why = certProblem ?? describeConnectError(e);
    throw new LocalError('QHCP_ERR_CONNECT', `cannot connect to ${opts.host}:${opts.port}: ${why}`, { cause: e });
  }
  client.addEventListener(qev.EventQUICClientError.name, () => {});
  const channel = new Channel(
    client.connection,
    (code, reason) => client.destroy({ isApp: true, errorCode: code, reason, force: true }),
    { maxFrameBytes: opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES },
  );
  channel.attach(client.connection.newStream('bidi'));
  return channel;
}

function describeConnectError(e: unknown): string {
  if (e instanceof qerr.ErrorQUICConnectionStartTimeout || e instanceof qerr.ErrorQUICClientCreateTimeout) return 'handshake timed out';
  if (e instanceof qerr.ErrorQUICConnectionPeerTLS) return 'the server rejected the TLS handshake';
  if (e instanceof qerr.ErrorQUICConnectionLocalTLS) return 'TLS verification failed';
  if (e instanceof qerr.ErrorQUICConnectionPeer) {
    const d = (e as { data?: { errorCode?: number; reason?: Uint8Array } }).data;
    return `refused by peer (code ${d?.errorCode ?? '?'}${d?.reason?.length ? `: ${Buffer.from(d.reason).toString()}` : ''})`;
  }
  if (e instanceof qerr.ErrorQUICConnectionIdleTimeout) return 'handshake timed out';
  return errorText(e);
}
