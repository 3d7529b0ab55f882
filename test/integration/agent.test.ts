/**
 * The agent (`qhcp server` process) spoken to directly: an in-process client (transport
 * connect + Session) does HELLO, HEALTH_REQUEST, CONFIG_UPDATE and TERMINATE against it.
 * CONFIG_UPDATE applies to its own connection only; pushed HEALTH_REPORTs follow the interval.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { connect, ClientSocket } from '../../core/transport/quic.ts';
import { Session } from '../../core/protocol/session.ts';
import { SUPPORTED_VERSIONS, type Message } from '../../core/protocol/messages.ts';
import { startServer, startLoadBalancer, stopAll, waitUntil, sleep, type QhcpProcess } from '../helpers/procs.ts';

type Of<K extends Message['type']> = Extract<Message, { type: K }>;

/** Bytes waiting unread in this host's UDP socket bound to `port` (Linux /proc/net/udp and udp6, rx_queue). */
function queuedBytes(port: number): number {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  for (const file of ['/proc/net/udp', '/proc/net/udp6']) {
    for (const line of readFileSync(file, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[1]?.endsWith(hex)) return parseInt(f[4]!.split(':')[1]!, 16);
    }
  }
  return 0;
}

/**
 * This process does nothing else (a stall: what arrives meanwhile waits in the sockets) for `ms`,
 * and on until the peer's datagrams wait unread on `port` and 100 ms more for the rest of its
 * flight (at most 10 s: a peer slowed by a loaded machine still gets there). Returns the bytes
 * then waiting.
 */
function busyUntilQueued(port: number, ms: number): number {
  const start = Date.now();
  let queuedAt = 0;
  for (;;) {
    const now = Date.now();
    if (!queuedAt && queuedBytes(port) > 0) queuedAt = now;
    if ((now - start >= ms && queuedAt && now - queuedAt >= 100) || now - start >= 10_000) return queuedBytes(port);
  }
}

/** A checker session to the agent, with every pushed message recorded. */
async function open(port: number, node: string): Promise<{ s: Session; pushed: Message[] }> {
  const pushed: Message[] = [];
  const channel = await connect({ host: '127.0.0.1', port, timeoutMs: 10_000 });
  const s = new Session(channel, { role: 'client', onMessage: (m) => (m.type === 'HEALTH_REPORT' || m.type === 'DRAIN' ? pushed.push(m) : undefined) });
  const ack = (await s.request('HELLO', { versions: [...SUPPORTED_VERSIONS], role: 'checker', node }, 10_000)) as Of<'ACK'>;
  expect(ack.body.role).to.equal('agent');
  expect(ack.body.metrics).to.include.members(['cpu', 'memory', 'load1']);
  return { s, pushed };
}

describe('agent: HEALTH_REQUEST, CONFIG_UPDATE per connection, TERMINATE', function () {
  this.timeout(60_000);
  let cwd: string;
  let server: { proc: QhcpProcess; port: number };
  const sessions: Session[] = [];

  before(async () => {
    cwd = mkdtempSync(join(tmpdir(), 'qhcp-agent-'));
    server = await startServer({ cwd, args: ['-sample-interval', '0.2'] });
  });
  afterEach(() => {
    for (const s of sessions.splice(0)) s.close('test done');
  });
  after(async () => {
    await stopAll();
    if (cwd) rmSync(cwd, { recursive: true, force: true });
  });

  it('HEALTH_REQUEST is answered with the current metrics (CPU %, memory %, load average)', async () => {
    const { s } = await open(server.port, 'test-a');
    sessions.push(s);
    const res = (await s.request('HEALTH_REQUEST', { seq: 7 }, 10_000)) as Of<'HEALTH_RESPONSE'>;
    expect(res.body.seq).to.equal(7);
    const m = res.body.metrics;
    expect(m).to.include.keys('cpu', 'memory', 'load1');
    expect(m.cpu).to.be.within(0, 100);
    expect(m.memory).to.be.within(0, 100);
    expect(m.load1).to.be.at.least(0);
    // Sampled in the background: the answer is the cached sample, younger than a few intervals.
    expect(res.body.ageMs).to.be.within(0, 10_000);
    // No checks configured: the agent's own default service serves, READY, at the default weight.
    expect({ verdict: res.body.verdict, admin: res.body.admin, weight: res.body.weight }).to.deep.equal({ verdict: 'SERVING', admin: 'READY', weight: 100 });
    expect(res.body).to.not.have.property('services');
  });

  it('ACK says the agent\'s maximum frame size; CONFIG_UPDATE with only unknown names selects none, [] selects all', async () => {
    const channel = await connect({ host: '127.0.0.1', port: server.port, timeoutMs: 10_000 });
    const s = new Session(channel, { role: 'client', onMessage: () => {} });
    sessions.push(s);
    const ack = (await s.request('HELLO', { versions: [...SUPPORTED_VERSIONS], role: 'checker', node: 'limits', maxFrameBytes: 2048 }, 10_000)) as Of<'ACK'>;
    expect(ack.body.maxFrameBytes).to.equal(65536);
    const none = (await s.request('CONFIG_UPDATE', { seq: 1, metrics: ['no.such.metric'] }, 10_000)) as Of<'CONFIG_ACK'>;
    expect(none.body.metrics).to.deep.equal([]);
    const empty = (await s.request('HEALTH_REQUEST', { seq: 2 }, 10_000)) as Of<'HEALTH_RESPONSE'>;
    expect(empty.body.metrics).to.deep.equal({});
    expect(empty.body.verdict, 'verdicts still come').to.equal('SERVING');
    const all = (await s.request('CONFIG_UPDATE', { seq: 3, metrics: [] }, 10_000)) as Of<'CONFIG_ACK'>;
    expect(all.body.metrics).to.include.members(['cpu', 'memory', 'load1']);
  });

  it("CONFIG_UPDATE (only ['cpu'], report every 200 ms) changes that connection only", async () => {
    const a = await open(server.port, 'test-config');
    const b = await open(server.port, 'test-other');
    sessions.push(a.s, b.s);

    const ack = (await a.s.request('CONFIG_UPDATE', { seq: 1, metrics: ['cpu'], reportIntervalMs: 200 }, 10_000)) as Of<'CONFIG_ACK'>;
    expect(ack.body).to.deep.equal({ seq: 1, metrics: ['cpu'], reportIntervalMs: 200 });

    const ra = (await a.s.request('HEALTH_REQUEST', { seq: 2 }, 10_000)) as Of<'HEALTH_RESPONSE'>;
    expect(Object.keys(ra.body.metrics)).to.deep.equal(['cpu']);

    // Pushed reports arrive, at about the interval, carrying only cpu.
    await waitUntil(() => a.pushed.length >= 3, 15_000, 'three HEALTH_REPORTs');
    for (const m of a.pushed) {
      expect(m.type).to.equal('HEALTH_REPORT');
      expect(Object.keys((m as Of<'HEALTH_REPORT'>).body.metrics)).to.deep.equal(['cpu']);
    }

    // The other connection still gets every metric, and no pushes.
    const rb = (await b.s.request('HEALTH_REQUEST', { seq: 1 }, 10_000)) as Of<'HEALTH_RESPONSE'>;
    expect(rb.body.metrics).to.include.keys('cpu', 'memory', 'load1');
    expect(b.pushed).to.deep.equal([]);

    // Turning reports off stops them; an empty metric list means all metrics again.
    const off = (await a.s.request('CONFIG_UPDATE', { seq: 3, metrics: [], reportIntervalMs: 0 }, 10_000)) as Of<'CONFIG_ACK'>;
    expect(off.body.reportIntervalMs).to.equal(0);
    expect(off.body.metrics).to.include.members(['cpu', 'memory', 'load1']);
    await sleep(100); // a report already on the wire may still land
    const n = a.pushed.length;
    await sleep(700);
    expect(a.pushed.length).to.equal(n);
    const all = (await a.s.request('HEALTH_REQUEST', { seq: 4 }, 10_000)) as Of<'HEALTH_RESPONSE'>;
    expect(all.body.metrics).to.include.keys('cpu', 'memory', 'load1');
  });

  it('TERMINATE is answered with TERMINATE_ACK and the session closes cleanly', async () => {
    const { s } = await open(server.port, 'test-terminate');
    sessions.push(s);
    const ack = await s.request('TERMINATE', { reason: 'test done' }, 10_000);
    expect(ack.type).to.equal('TERMINATE_ACK');
    const end = await s.closed();
    expect(end.code).to.equal(0);
    expect(end.error).to.equal(undefined);
    // The server goes on serving new connections.
    const again = await open(server.port, 'test-after');
    sessions.push(again.s);
    expect(((await again.s.request('HEALTH_REQUEST', { seq: 1 }, 10_000)) as Of<'HEALTH_RESPONSE'>).body.metrics).to.include.keys('cpu');
  });

  it("a response timeout that passes while this process is busy waits for the read: the answer waiting unread in the socket is taken, it is no timeout", async () => {
    const { s } = await open(server.port, 'test-busy');
    sessions.push(s);
    const p = s.request('HEALTH_REQUEST', { seq: 1 }, 200);
    // The request leaves in this turn's check phase; then this process is busy past the timeout
    // while the agent (another process) answers.
    await new Promise((r) => setImmediate(r));
    expect(busyUntilQueued(s.channel.connection.ep.local.port, 800), 'the answer waits unread when the timeout is due').to.be.greaterThan(0);
    const m = await p;
    expect(m.type).to.equal('HEALTH_RESPONSE');
    expect(s.isClosed).to.equal(false);
  });

  it("a handshake limit that passes while this process is busy waits for the read: the server's flight waiting unread completes the handshake", async () => {
    // A query port (no Retry on loopback: one flight each way) of a real load balancer process.
    const lb = await startLoadBalancer([`127.0.0.1:${server.port}`], { cwd });
    const socket = await ClientSocket.open('127.0.0.1');
    try {
      const pending = connect({ host: '127.0.0.1', port: lb.port, timeoutMs: 200, socket });
      for (let i = 0; i < 100 && socket.stats.datagramsOut === 0; i++) await new Promise((r) => setImmediate(r));
      expect(socket.stats.datagramsOut, 'the Initial left').to.be.greaterThan(0);
      expect(busyUntilQueued(socket.port, 800), "the server's flight waits unread when the limit is due").to.be.greaterThan(0);
      const ch = await pending;
      await ch.close(0, 'done');
    } finally {
      await socket.close();
    }
  });

  it('on SIGTERM the agent sends DRAIN to every connected client, then exits 0', async () => {
    const own = await startServer({ cwd, args: ['-drain-grace', '1'] });
    const clients = await Promise.all([0, 1, 2].map((i) => open(own.port, `drain-${i}`)));
    sessions.push(...clients.map((c) => c.s));
    own.proc.signal('SIGTERM');
    await waitUntil(() => clients.every((c) => c.pushed.some((m) => m.type === 'DRAIN')), 15_000, 'DRAIN on every session');
    for (const c of clients) {
      const d = c.pushed.find((m) => m.type === 'DRAIN') as Of<'DRAIN'>;
      expect(d.body.graceMs).to.equal(1000);
    }
    // Nobody answers with TERMINATE here: the agent waits out its grace, then closes and exits.
    expect(await own.proc.exited).to.deep.equal({ code: 0, signal: null });
    for (const c of clients) await waitUntil(() => c.s.isClosed, 15_000, 'the session closed by the agent');
  });
});
