/**
 * A UDP relay for fault tests, loopback only: clients send to the relay's port, the relay
 * forwards to one target and back, and on the way it can drop, delay, duplicate and reorder
 * datagrams or cut the path entirely. Each client address gets its own upstream socket, so
 * the target sees one source per client (as QUIC needs). Everything is bounded: the number of
 * flows, the datagrams held for delay or reordering; excess is dropped and counted.
 */
import { createSocket, type Socket, type RemoteInfo } from 'node:dgram';

export type Direction = 'up' | 'down';

export interface RelayFaults {
  /** Probability (0-1) that a datagram is dropped. */
  loss: number;
  /** Added one-way delay, ms, plus up to `jitterMs` at random. */
  delayMs: number;
  jitterMs: number;
  /** Probability that a datagram is sent twice. */
  duplicate: number;
  /** Probability that a datagram is held back and sent after the next one. */
  reorder: number;
  /** Drop everything in both directions. */
  cut: boolean;
  /** Which directions the faults above apply to (default both). */
  directions: Direction[];
}

export interface RelayCounters {
  received: number;
  forwarded: number;
  dropped: number;
  duplicated: number;
  reordered: number;
  overflow: number;
}

interface Flow {
  client: RemoteInfo;
  upstream: Socket;
  lastSeen: number;
  /** A datagram held back for reordering, per direction. */
  held: Partial<Record<Direction, { data: Buffer; timer: NodeJS.Timeout }>>;
}

const LOOPBACK = /^127\.|^::1$|^localhost$/;
const MAX_FLOWS = 512;
const MAX_IN_FLIGHT = 20_000;
const FLOW_IDLE_MS = 120_000;

export class UdpRelay {
  readonly faults: RelayFaults = { loss: 0, delayMs: 0, jitterMs: 0, duplicate: 0, reorder: 0, cut: false, directions: ['up', 'down'] };
  readonly counters: Record<Direction, RelayCounters> = { up: blank(), down: blank() };
  /** Optional extra rule: return false to drop this datagram (after the counters saw it). */
  filter: ((dir: Direction, data: Buffer, flow: { client: string; index: number }) => boolean) | undefined;
  private readonly flows = new Map<string, Flow>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private inFlight = 0;
  private closed = false;
  private readonly sweeper: NodeJS.Timeout;
  private readonly indexes = new Map<string, number>();

  private constructor(
    private readonly socket: Socket,
    readonly targetHost: string,
    readonly targetPort: number,
  ) {
    socket.on('message', (data, rinfo) => this.fromClient(data, rinfo));
    socket.on('error', () => {});
    this.sweeper = setInterval(() => this.sweep(), 10_000);
    this.sweeper.unref();
  }

  /** Starts a relay on 127.0.0.1 (`port` or any free one) towards `target` on loopback. */
  static async start(target: { host?: string; port: number }, port = 0): Promise<UdpRelay> {
    const host = target.host ?? '127.0.0.1';
    if (!LOOPBACK.test(host)) throw new Error(`udp relay: target ${host} is not loopback`);
    const socket = createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(port, '127.0.0.1', () => {
        socket.off('error', reject);
        resolve();
      });
    });
    return new UdpRelay(socket, host, target.port);
  }

  get port(): number {
    return this.socket.address().port;
  }
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Sets some faults; the rest keep their values. */
  set(faults: Partial<RelayFaults>): this {
    Object.assign(this.faults, faults);
    return this;
  }

  /** Back to a clean path. */
  heal(): this {
    return this.set({ loss: 0, delayMs: 0, jitterMs: 0, duplicate: 0, reorder: 0, cut: false, directions: ['up', 'down'] });
  }

  /** Client keys (host:port) of the flows open now. */
  get clients(): string[] {
    return [...this.flows.keys()];
  }

  /**
   * Sends `data` to the target from `client`'s flow (its upstream socket, so the target sees
   * that flow's address and port), past every fault and filter: a replay by someone on the path.
   */
  inject(client: string, data: Buffer): boolean {
    const flow = this.flows.get(client);
    if (!flow || this.closed) return false;
    flow.upstream.send(data, this.targetPort, this.targetHost);
    return true;
  }

  /** Forgets every flow (closes the upstream sockets): the next datagrams start new ones. */
  resetFlows(): void {
    for (const f of this.flows.values()) this.closeFlow(f);
    this.flows.clear();
    this.indexes.clear();
  }

  private fromClient(data: Buffer, client: RemoteInfo): void {
    if (this.closed) return;
    const key = `${client.address}:${client.port}`;
    let flow = this.flows.get(key);
    if (!flow) {
      if (this.flows.size >= MAX_FLOWS) {
        this.counters.up.overflow++;
        return;
      }
      const upstream = createSocket('udp4');
      upstream.on('error', () => {});
      const f: Flow = { client, upstream, lastSeen: Date.now(), held: {} };
      upstream.on('message', (d) => {
        f.lastSeen = Date.now();
        this.pass('down', d, f, key);
      });
      upstream.bind(0, '127.0.0.1');
      flow = f;
      this.flows.set(key, f);
    }
    flow.lastSeen = Date.now();
    this.pass('up', data, flow, key);
  }

  private pass(dir: Direction, data: Buffer, flow: Flow, key: string): void {
    const c = this.counters[dir];
    c.received++;
    const index = (this.indexes.get(`${dir}:${key}`) ?? 0) + 1;
    this.indexes.set(`${dir}:${key}`, index);
    if (this.faults.cut || (this.filter && !this.filter(dir, data, { client: key, index }))) {
      c.dropped++;
      return;
    }
    const f = this.faults;
    const applies = f.directions.includes(dir);
    if (applies && f.loss > 0 && Math.random() < f.loss) {
      c.dropped++;
      return;
    }
    const copies = applies && f.duplicate > 0 && Math.random() < f.duplicate ? 2 : 1;
    if (copies === 2) c.duplicated++;
    const held = flow.held[dir];
    if (applies && f.reorder > 0 && !held && Math.random() < f.reorder) {
      // Hold this one until the next datagram in the same direction passes (or 50 ms).
      c.reordered++;
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        if (flow.held[dir]?.timer === timer) {
          delete flow.held[dir];
          this.emit(dir, data, flow, copies);
        }
      }, 50);
      this.timers.add(timer);
      flow.held[dir] = { data, timer };
      return;
    }
    this.emit(dir, data, flow, copies);
    if (held) {
      clearTimeout(held.timer);
      this.timers.delete(held.timer);
      delete flow.held[dir];
      this.emit(dir, held.data, flow, 1);
    }
  }

  private emit(dir: Direction, data: Buffer, flow: Flow, copies: number): void {
    const f = this.faults;
    const delay = f.directions.includes(dir) ? f.delayMs + (f.jitterMs > 0 ? Math.random() * f.jitterMs : 0) : 0;
    for (let i = 0; i < copies; i++) {
      if (delay <= 0) {
        this.send(dir, data, flow);
        continue;
      }
      if (this.inFlight >= MAX_IN_FLIGHT) {
        this.counters[dir].overflow++;
        continue;
      }
      this.inFlight++;
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        this.inFlight--;
        // A cut made while the datagram was in flight drops it too.
        if (this.faults.cut) this.counters[dir].dropped++;
        else this.send(dir, data, flow);
      }, delay);
      this.timers.add(timer);
    }
  }

  private send(dir: Direction, data: Buffer, flow: Flow): void {
    if (this.closed) return;
    this.counters[dir].forwarded++;
    try {
      if (dir === 'up') flow.upstream.send(data, this.targetPort, this.targetHost);
      else this.socket.send(data, flow.client.port, flow.client.address);
    } catch {
      /* socket closed underneath */
    }
  }

  private sweep(): void {
    const now = Date.now();
    for (const [key, f] of this.flows) {
      if (now - f.lastSeen > FLOW_IDLE_MS) {
        this.closeFlow(f);
        this.flows.delete(key);
        this.indexes.delete(`up:${key}`);
        this.indexes.delete(`down:${key}`);
      }
    }
  }

  private closeFlow(f: Flow): void {
    for (const h of Object.values(f.held)) if (h) clearTimeout(h.timer);
    try {
      f.upstream.close();
    } catch {
      /* already closed */
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweeper);
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.resetFlows();
    await new Promise<void>((r) => this.socket.close(() => r()));
  }
}

function blank(): RelayCounters {
  return { received: 0, forwarded: 0, dropped: 0, duplicated: 0, reordered: 0, overflow: 0 };
}
