/**
 * `qhcp/client`: the query client behind `qhcp status` and `qhcp pick`, for programs that ask a
 * load balancer which backend to use. One QUIC session to its query port (HELLO as role
 * "query"), any number of STATUS / PICK requests over it, then TERMINATE:
 *
 *   import { QueryClient } from 'qhcp/client';
 *   const lb = await QueryClient.open({ host: '127.0.0.1', port: 4242, ca: readFileSync('ca.pem', 'utf8') });
 *   try {
 *     const { server, balancer, why } = await lb.pick('user-42');   // server: "10.0.0.2:4243" or null
 *     const { servers } = await lb.status();                         // every backend's state and metrics
 *   } finally {
 *     await lb.close();
 *   }
 *
 * Without `ca` the load balancer's certificate is not verified. Every request is bounded by
 * `timeoutMs`; failures are thrown as LocalError (connect), ProtocolError or PeerError. Calls made
 * concurrently on one client share its connection: they are pipelined (`pipeline`, default 16
 * written ahead) and each resolves with its own answer, in the order the calls were made.
 */
import { connect } from '../transport/quic.ts';
import { DEFAULT_MAX_FRAME_BYTES } from '../protocol/codec.ts';
import { Session, type SessionEnd } from '../protocol/session.ts';
import { ProtocolError } from '../errors.ts';
import { FIELD_LIMITS, SUPPORTED_VERSIONS, type Bodies, type Message, type ServerStatus } from '../protocol/messages.ts';
import { hostname } from 'node:os';

export interface QueryOptions {
  /** The load balancer's query address (`loadbalancerHost`, `loadbalancerPort`). */
  host: string;
  port: number;
  /** CA (or the certificate itself), PEM, to verify the load balancer with; absent: not verified. */
  ca?: string;
  /** The name its certificate must carry (default: `host`). */
  serverName?: string;
  /** Bound on the connection and on each request (default 5000 ms). */
  timeoutMs?: number;
  /** A token for HELLO (a load balancer whose auth plugin verifies query clients requires one). */
  token?: string;
  /** The largest frame payload we accept (sent in HELLO; STATUS answers come in pages that fit). */
  maxFrameBytes?: number;
  /** QUIC idle timeout: a connection silent this long is dropped (default 30000 ms). */
  idleTimeoutMs?: number;
  /** QUIC PINGs this often keep an idle session open and find a dead peer within the idle timeout. */
  keepAliveMs?: number;
  /**
   * Requests (PICK, STATUS pages) written to the load balancer before their answers arrive, when
   * the caller issues them concurrently (default 16; 1: one at a time). The load balancer answers
   * in order; more concurrent calls than this wait in order. Each call still gets its own answer
   * or error.
   */
  pipeline?: number;
}

/** Requests in flight on one query session by default (QueryOptions.pipeline). */
export const DEFAULT_PIPELINE = 16;

/**
 * A query session with a load balancer, past HELLO / ACK: what QueryClient and watch() build on.
 * `handlers` hear every message received after ACK and the session's end.
 * @throws LocalError QHCP_ERR_CONNECT, ProtocolError, PeerError
 */
export async function openQuerySession(
  opts: QueryOptions,
  handlers: { onMessage?: (m: Message, s: Session) => void; onClose?: (why: SessionEnd, s: Session) => void } = {},
): Promise<{ session: Session; ack: Bodies['ACK'] }> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  const channel = await connect({
    host: opts.host,
    port: opts.port,
    timeoutMs,
    maxFrameBytes,
    ...(opts.ca ? { ca: opts.ca } : {}),
    ...(opts.serverName ? { serverName: opts.serverName } : {}),
    ...(opts.idleTimeoutMs !== undefined ? { idleTimeoutMs: opts.idleTimeoutMs } : {}),
    ...(opts.keepAliveMs !== undefined ? { keepAliveMs: opts.keepAliveMs } : {}),
  });
  const session = new Session(channel, { role: 'client', pipeline: opts.pipeline ?? DEFAULT_PIPELINE, onMessage: handlers.onMessage ?? (() => {}), ...(handlers.onClose ? { onClose: handlers.onClose } : {}) });
  const hello = { versions: [...SUPPORTED_VERSIONS], role: 'query' as const, node: `${hostname()}:query`, maxFrameBytes, ...(opts.token ? { token: opts.token } : {}) };
  const ack = (await session.request('HELLO', hello, timeoutMs)) as Extract<Message, { type: 'ACK' }>;
  if (!SUPPORTED_VERSIONS.includes(ack.body.version)) {
    // An ACK naming a version we did not offer: 102, as the spec says.
    session.fail(new ProtocolError('UNSUPPORTED_VERSION', `ACK chose version ${ack.body.version}, which was not offered`));
    throw new ProtocolError('UNSUPPORTED_VERSION', `${opts.host}:${opts.port} chose version ${ack.body.version}, which was not offered`);
  }
  if (ack.body.maxFrameBytes !== undefined) session.peerMaxFrameBytes = ack.body.maxFrameBytes;
  if (ack.body.role !== 'loadbalancer') {
    session.fail(new ProtocolError('UNSUPPORTED_REQUEST', 'not a load balancer'));
    throw new ProtocolError('UNSUPPORTED_REQUEST', `${opts.host}:${opts.port} is an ${ack.body.role}, not a load balancer`);
  }
  session.peer = { node: ack.body.node, role: 'loadbalancer' };
  return { session, ack: ack.body };
}

export class QueryClient {
  private seq = 0;
  private constructor(
    private readonly session: Session,
    private readonly timeoutMs: number,
  ) {}

  /** @throws LocalError QHCP_ERR_CONNECT, ProtocolError, PeerError */
  static async open(opts: QueryOptions): Promise<QueryClient> {
    const { session } = await openQuerySession(opts);
    return new QueryClient(session, opts.timeoutMs ?? 5000);
  }

  /**
   * Every backend's status, or only those of one service (`host:4243/web` backends), reading
   * every page of the answer (STATUS `offset`, STATUS_RESPONSE `next`).
   */
  async status(service?: string): Promise<{ node: string; servers: ServerStatus[] }> {
    const servers: ServerStatus[] = [];
    let node = '';
    let offset: number | undefined = 0;
    // Bounded: each page holds at least one server and a load balancer lists at most maxServers.
    for (let page = 0; offset !== undefined && page <= FIELD_LIMITS.maxServers; page++) {
      const body = { seq: ++this.seq, ...(service !== undefined ? { service } : {}), ...(offset > 0 ? { offset } : {}) };
      const res = (await this.session.request('STATUS', body, this.timeoutMs)) as Extract<Message, { type: 'STATUS_RESPONSE' }>;
      node = res.body.node;
      servers.push(...res.body.servers);
      const next: number | undefined = res.body.next;
      if (next !== undefined && next <= offset) throw new ProtocolError('INVALID_MESSAGE', `STATUS_RESPONSE next ${next} does not move past offset ${offset}`);
      offset = next;
    }
    return { node, servers };
  }

  /**
   * One backend for `key` (affinity), among those of `service` when given; with the balancer
   * that chose it and why, or the reason there is none.
   */
  async pick(key?: string, service?: string): Promise<{ server: string | null; reason?: string; balancer?: string; why?: string }> {
    const res = (await this.session.request('PICK', { seq: ++this.seq, ...(key !== undefined ? { key } : {}), ...(service !== undefined ? { service } : {}) }, this.timeoutMs)) as Extract<Message, { type: 'PICK_RESPONSE' }>;
    const b = res.body;
    return { server: b.server, ...(b.reason ? { reason: b.reason } : {}), ...(b.balancer ? { balancer: b.balancer } : {}), ...(b.why ? { why: b.why } : {}) };
  }

  async close(): Promise<void> {
    try {
      if (this.session.dfa.peek('send:TERMINATE')) await this.session.request('TERMINATE', {}, 1000);
    } catch {
      /* closing anyway */
    }
    this.session.close('done');
  }
}
