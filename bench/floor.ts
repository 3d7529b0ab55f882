/**
 * The floor: what QUIC itself costs per message, with no qhcp code in the way, for two
 * implementations side by side (`impl`):
 *   lib     @matrixai/quic's JavaScript layer (QUICServer/QUICClient, a socket per client), what
 *           qhcp used before issue 12;
 *   driver  qhcp's own driver (core/transport/driver.ts) on the same quiche binding: one socket
 *           per side, connections routed by id, one timer heap, sends batched per turn.
 *   udp     no QUIC at all: Node's dgram alone, push shape only: the server sends one 100-byte
 *           datagram per interval per flow to one client socket, which answers each with a
 *           40-byte datagram (as a QUIC receiver acknowledges). What any Node program on this
 *           machine pays per report received and acknowledged: the floor under the floor.
 * One process plays either side (forked twice by bench/run.ts, driven over IPC):
 *
 *   serve  a QUICServer that echoes every message (ping-pong) or, told so by the client's first
 *          byte, pushes one message per interval on the stream (push).
 *   open   a client opening `conns` connections, one bidirectional stream each.
 *   run    ping-pong: each connection sends one ~100-byte message per interval and awaits the
 *          echo (the shape of a poll check), or closed loop (as fast as possible, one at a time);
 *          push: the client only reads what the server pushes (the shape of a push report).
 *
 * The parent reads both processes' CPU from /proc around `run`, and the client's RSS around `open`.
 * This is the only qhcp file that imports @matrixai/quic's JavaScript layer: the floor has to
 * measure the library bare.
 */
import { randomBytes, randomFillSync, createHmac, timingSafeEqual } from 'node:crypto';
import { createSocket, type Socket } from 'node:dgram';
import { performance } from 'node:perf_hooks';
import { QUICServer, QUICClient, events as qev } from '@matrixai/quic';
import type { QUICConnection, QUICStream } from '@matrixai/quic';
import QuicLogger, { LogLevel } from '@matrixai/logger';
import { selfSigned } from '../core/transport/tls.ts';
import { Endpoint, quiche, type Conn, type NativeConfig } from '../core/transport/driver.ts';

export type FloorImpl = 'lib' | 'driver' | 'udp';
export type FloorRequest =
  | { id: number; cmd: 'serve'; impl?: FloorImpl }
  | { id: number; cmd: 'open'; port: number; conns: number; mode: 'echo' | 'push'; intervalMs: number; impl?: FloorImpl; atOnce?: number }
  | { id: number; cmd: 'run'; seconds: number; closedLoop?: boolean }
  | { id: number; cmd: 'stats' }
  | { id: number; cmd: 'stop' };
export type FloorReply = { id: number; ok: boolean; error?: string; port?: number; messages?: number; rttsUs?: number[]; openMs?: number; stats?: Record<string, number> };

const ALPN = 'qhcp-floor';
const logger = new QuicLogger('floor', LogLevel.ERROR);
/** About the size of a HEALTH_RESPONSE frame. */
const MESSAGE = Buffer.alloc(100, 0x61);

let server: QUICServer | undefined;
const clients: QUICClient[] = [];
const lanes: Array<{ stream: QUICStream; writer: WritableStreamDefaultWriter<Uint8Array>; reader: ReadableStreamDefaultReader<Uint8Array> }> = [];
let received = 0;

async function serve(): Promise<number> {
  const tls = await selfSigned(['127.0.0.1']);
  const key = randomBytes(32);
  const sign = (k: ArrayBuffer, d: ArrayBuffer) => createHmac('sha256', Buffer.from(k)).update(Buffer.from(d)).digest();
  server = new QUICServer({
    crypto: {
      key: key.buffer.slice(key.byteOffset, key.byteOffset + 32) as ArrayBuffer,
      ops: {
        sign: async (k, d) => {
          const s = sign(k, d);
          return s.buffer.slice(s.byteOffset, s.byteOffset + s.byteLength) as ArrayBuffer;
        },
        verify: async (k, d, sig) => {
          const s = sign(k, d);
          return s.length === sig.byteLength && timingSafeEqual(s, Buffer.from(sig));
        },
      },
    },
    config: { key: tls.key, cert: tls.cert, applicationProtos: [ALPN], verifyPeer: false, maxIdleTimeout: 60_000 },
    logger,
  });
  server.addEventListener(qev.EventQUICServerConnection.name, ((e: Event & { detail: QUICConnection }) => {
    e.detail.addEventListener(qev.EventQUICConnectionStream.name, ((se: Event & { detail: QUICStream }) => void serveStream(se.detail)) as EventListener);
  }) as EventListener);
  await server.start({ host: '127.0.0.1', port: 0 });
  return server.port as number;
}

async function serveStream(stream: QUICStream): Promise<void> {
  const reader = stream.readable.getReader();
  const writer = stream.writable.getWriter();
  try {
    const first = await reader.read();
    if (first.done) return;
    const hello = Buffer.from(first.value);
    if (hello[0] === 0x50 /* P */) {
      const intervalMs = hello.readUInt32BE(1);
      const t = setInterval(() => void writer.write(MESSAGE).catch(() => clearInterval(t)), intervalMs);
      await reader.read().catch(() => {});
      clearInterval(t);
      return;
    }
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      await writer.write(value);
    }
  } catch {
    /* connection closed */
  }
}

/**
 * Connections opened at once by `open` (both implementations), unless the request says `atOnce`.
 * 1000 at once through the driver (atOnce: 1000) opened in 8.4 s at load 12 on 2 cores, near its
 * 10 s handshake limit, which some runs missed: 1.9 s of client and 1.6 s of server CPU (about
 * 3.5 ms per connection, both sides) under one shared deadline, on a machine that gave each
 * process a fifth of a core; no kernel buffer overflow (UDP RcvbufErrors/SndbufErrors 0), no
 * handshake refused; 583 clients resent their first Initial after the probe timeout and got a
 * second Retry. CPU starvation, not loss: the load balancer opens at most 16 at a time.
 */
const OPEN_BATCH = 1;
let openMs = 0;

async function open(req: Extract<FloorRequest, { cmd: 'open' }>): Promise<void> {
  const one = async (): Promise<void> => {
    const client = await QUICClient.createQUICClient(
      {
        host: '127.0.0.1',
        port: req.port,
        crypto: { ops: { randomBytes: async (data: ArrayBuffer) => void randomFillSync(new Uint8Array(data)) } },
        config: { applicationProtos: [ALPN], verifyPeer: false, maxIdleTimeout: 60_000 },
        logger,
      },
      { timer: 30_000 },
    );
    client.addEventListener(qev.EventQUICClientError.name, () => {});
    clients.push(client);
    const stream = client.connection.newStream('bidi');
    const writer = stream.writable.getWriter();
    const reader = stream.readable.getReader();
    const hello = Buffer.alloc(5);
    hello[0] = req.mode === 'push' ? 0x50 : 0x45;
    hello.writeUInt32BE(req.intervalMs, 1);
    await writer.write(hello);
    lanes.push({ stream, writer, reader });
    if (req.mode === 'push') void drain(reader);
  };
  const batch = req.atOnce ?? OPEN_BATCH;
  for (let i = 0; i < req.conns; i += batch) await Promise.all(Array.from({ length: Math.min(batch, req.conns - i) }, one));
  mode = req.mode;
  intervalMs = req.intervalMs;
}

let mode: 'echo' | 'push' = 'echo';
let intervalMs = 1000;

async function drain(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<void> {
  try {
    for (;;) {
      const { done } = await reader.read();
      if (done) return;
      received++;
    }
  } catch {
    /* closed */
  }
}

/** One lane's ping-pong loop until `end`: one message per interval (or back to back). */
async function pingLoop(lane: (typeof lanes)[number], end: number, closedLoop: boolean, rtts: number[]): Promise<number> {
  let n = 0;
  // Spread the lanes over the interval as a load balancer spreads its checks.
  if (!closedLoop) await new Promise((r) => setTimeout(r, Math.random() * intervalMs));
  let next = performance.now();
  while (performance.now() < end) {
    const t = performance.now();
    await lane.writer.write(MESSAGE);
    let got = 0;
    while (got < MESSAGE.length) {
      const { value, done } = await lane.reader.read();
      if (done) return n;
      got += value.length;
    }
    n++;
    if (rtts.length < 100_000) rtts.push(Math.round((performance.now() - t) * 1000));
    if (!closedLoop) {
      next += intervalMs;
      const wait = next - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  }
  return n;
}

async function run(seconds: number, closedLoop: boolean): Promise<{ messages: number; rttsUs: number[] }> {
  const end = performance.now() + seconds * 1000;
  if (mode === 'push') {
    const before = received;
    await new Promise((r) => setTimeout(r, seconds * 1000));
    return { messages: received - before, rttsUs: [] };
  }
  const rtts: number[] = [];
  const counts = impl === 'driver' ? await Promise.all(dlanes.map((l) => pingDriver(l, end, closedLoop, rtts))) : await Promise.all(lanes.map((l) => pingLoop(l, end, closedLoop, rtts)));
  return { messages: counts.reduce((a, b) => a + b, 0), rttsUs: rtts };
}

async function stop(): Promise<void> {
  for (const t of utimers) clearInterval(t);
  uclient?.close();
  userver?.close();
  await dclient?.close();
  await dserver?.close();
  await Promise.all(clients.map((c) => c.destroy({ force: true }).catch(() => {})));
  await server?.stop({ force: true }).catch(() => {});
}

// ---- the driver ------------------------------------------------------------------------------

function driverConfig(tls?: { cert: string; key: string }): NativeConfig {
  const c = tls ? quiche.Config.withBoringSslCtx(false, false, null, [Buffer.from(tls.key)], [Buffer.from(tls.cert)], null) : quiche.Config.withBoringSslCtx(false, true, null, null, null, null);
  c.setApplicationProtos([ALPN]);
  c.setMaxIdleTimeout(60_000);
  c.setMaxRecvUdpPayloadSize(quiche.MAX_DATAGRAM_SIZE);
  c.setMaxSendUdpPayloadSize(quiche.MAX_DATAGRAM_SIZE);
  c.setInitialMaxData(512 * 1024);
  c.setInitialMaxStreamDataBidiLocal(256 * 1024);
  c.setInitialMaxStreamDataBidiRemote(256 * 1024);
  c.setInitialMaxStreamsBidi(tls ? 2 : 0);
  c.setInitialMaxStreamsUni(0);
  c.setDisableActiveMigration(true);
  return c;
}

const dbuf = Buffer.allocUnsafe(65536);
let dserver: Endpoint | undefined;
let dclient: Endpoint | undefined;
const dlanes: Array<{ conn: Conn; got: number; waiter: (() => void) | undefined }> = [];

async function serveDriver(): Promise<number> {
  const tls = await selfSigned(['127.0.0.1']);
  const ep = await Endpoint.open('127.0.0.1', 0);
  dserver = ep;
  ep.server = {
    config: driverConfig(tls),
    maxPendingHandshakes: Infinity,
    handshakeTimeoutMs: 10_000,
    accepted: (conn) => {
      let mode = 0;
      let timer: NodeJS.Timeout | undefined;
      conn.events = {
        established: () => {},
        progress: () => {
          const q = conn.q;
          // The one stream a floor client opens (0), asked for directly: quiche's readable()
          // iterator costs ~30 us a call through the binding (core/transport/quic.ts does the same).
          if (!q.isReadable()) return;
          for (const id of [0]) {
            if (!q.streamReadable(id)) continue;
            for (;;) {
              let r: [number, boolean] | null;
              try {
                r = q.streamRecv(id, dbuf);
              } catch {
                break;
              }
              if (r === null) break;
              let data = dbuf.subarray(0, r[0]);
              if (mode === 0 && data.length >= 5) {
                mode = data[0]!;
                if (mode === 0x50) {
                  const every = data.readUInt32BE(1);
                  timer = setInterval(() => {
                    try {
                      q.streamSend(id, MESSAGE, false);
                    } catch {
                      clearInterval(timer);
                    }
                    ep.touch(conn);
                  }, every);
                }
                data = data.subarray(5);
              }
              if (mode === 0x45 && data.length > 0) {
                q.streamSend(id, data, false);
                // Written to quiche: this drain sends it (not an acknowledgement the driver may
                // treat as owed for a PING: driver.ts Conn.echoes).
                ep.touch(conn);
              }
            }
          }
        },
        ended: () => clearInterval(timer),
      };
    },
  };
  return ep.local.port;
}

async function openDriver(req: Extract<FloorRequest, { cmd: 'open' }>): Promise<void> {
  dclient ??= await Endpoint.open('127.0.0.1', 0);
  const ep = dclient;
  const config = driverConfig();
  const hello = Buffer.alloc(5);
  hello[0] = req.mode === 'push' ? 0x50 : 0x45;
  hello.writeUInt32BE(req.intervalMs, 1);
  const one = () =>
    new Promise<void>((resolve, reject) => {
      const conn = ep.connect('127.0.0.1', { host: '127.0.0.1', port: req.port }, config, 10_000);
      const lane = { conn, got: 0, waiter: undefined as (() => void) | undefined };
      conn.events = {
        established: () => {
          conn.q.streamSend(0, hello, false);
          ep.touch(conn);
          dlanes.push(lane);
          resolve();
        },
        progress: () => {
          if (!conn.q.isReadable()) return;
          for (const id of [0]) {
            if (!conn.q.streamReadable(id)) continue;
            for (;;) {
              let r: [number, boolean] | null;
              try {
                r = conn.q.streamRecv(id, dbuf);
              } catch {
                break;
              }
              if (r === null) break;
              lane.got += r[0];
              while (lane.got >= MESSAGE.length) {
                lane.got -= MESSAGE.length;
                received++;
                const w = lane.waiter;
                lane.waiter = undefined;
                w?.();
              }
            }
          }
        },
        ended: (e) => reject(new Error(`connection ended: ${e.reason}`)),
      };
    });
  // One after another, as the library's open above (or `atOnce` at a time).
  const batch = req.atOnce ?? OPEN_BATCH;
  for (let i = 0; i < req.conns; i += batch) await Promise.all(Array.from({ length: Math.min(batch, req.conns - i) }, one));
  mode = req.mode;
  intervalMs = req.intervalMs;
}

async function pingDriver(lane: (typeof dlanes)[number], end: number, closedLoop: boolean, rtts: number[]): Promise<number> {
  let n = 0;
  if (!closedLoop) await new Promise((r) => setTimeout(r, Math.random() * intervalMs));
  let next = performance.now();
  while (performance.now() < end) {
    const t = performance.now();
    const got = new Promise<void>((r) => (lane.waiter = r));
    lane.conn.q.streamSend(0, MESSAGE, false);
    lane.conn.ep.touch(lane.conn);
    await got;
    n++;
    if (rtts.length < 100_000) rtts.push(Math.round((performance.now() - t) * 1000));
    if (!closedLoop) {
      next += intervalMs;
      const wait = next - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  }
  return n;
}

// ---- bare UDP (no QUIC) ----------------------------------------------------------------------

const ACK = Buffer.alloc(40, 0x41);
let userver: Socket | undefined;
let uclient: Socket | undefined;
const utimers: NodeJS.Timeout[] = [];

async function bound(): Promise<Socket> {
  const s = createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  return s;
}

/** Push only: a hello [0x50, u32 interval ms, u32 flows] starts one timer per flow, each at its own phase. */
async function serveUdp(): Promise<number> {
  const s = (userver = await bound());
  s.on('message', (m, r) => {
    if (m.length !== 9 || m[0] !== 0x50 || utimers.length > 0) return;
    const every = m.readUInt32BE(1);
    const flows = Math.min(m.readUInt32BE(5), 20_000);
    for (let i = 0; i < flows; i++) {
      setTimeout(() => utimers.push(setInterval(() => s.send(MESSAGE, r.port, r.address), every)), Math.random() * every).unref();
    }
  });
  return s.address().port;
}

async function openUdp(req: Extract<FloorRequest, { cmd: 'open' }>): Promise<void> {
  if (req.mode !== 'push') throw new Error('udp: push only');
  const s = (uclient = await bound());
  s.on('message', (_m, r) => {
    received++;
    s.send(ACK, r.port, r.address);
  });
  const hello = Buffer.alloc(9);
  hello[0] = 0x50;
  hello.writeUInt32BE(req.intervalMs, 1);
  hello.writeUInt32BE(req.conns, 5);
  s.send(hello, req.port, '127.0.0.1');
  mode = 'push';
  intervalMs = req.intervalMs;
}

let impl: FloorImpl = 'lib';

process.on('message', (m: FloorRequest) => {
  void (async () => {
    try {
      if (m.cmd === 'serve') {
        impl = m.impl ?? 'lib';
        process.send!({ id: m.id, ok: true, port: impl === 'driver' ? await serveDriver() : impl === 'udp' ? await serveUdp() : await serve() });
      } else if (m.cmd === 'open') {
        impl = m.impl ?? 'lib';
        const t = performance.now();
        if (impl === 'driver') await openDriver(m);
        else if (impl === 'udp') await openUdp(m);
        else await open(m);
        openMs = performance.now() - t;
        process.send!({ id: m.id, ok: true, openMs: Math.round(openMs) });
      } else if (m.cmd === 'stats') process.send!({ id: m.id, ok: true, stats: { ...(dserver ?? dclient)?.stats, connections: (dserver ?? dclient)?.count ?? 0 } });
      else if (m.cmd === 'run') process.send!({ id: m.id, ok: true, ...(await run(m.seconds, m.closedLoop ?? false)) });
      else if (m.cmd === 'stop') {
        await stop();
        process.send!({ id: m.id, ok: true });
        process.exit(0);
      }
    } catch (e) {
      process.send!({ id: m.id, ok: false, error: String((e as Error)?.stack ?? e) });
    }
  })();
});
process.on('disconnect', () => process.exit(0));
