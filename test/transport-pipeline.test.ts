/**
 * Pipelining on the client side (docs/protocol.md, "Pipelining and backpressure"): a QueryClient
 * whose caller issues PICKs concurrently writes up to `pipeline` of them before the answers come,
 * each call gets its own answer in order, failures reach every call still outstanding, and the
 * client's DFA sees send, answer, send, answer as the server's does. The server here is a real
 * QUIC listener with server-role Sessions (the query port's hold-while-answering rule) whose
 * answers can be delayed, dropped, or sent wrong on purpose.
 */
import { expect } from 'chai';
import { Listener, type Channel } from '../core/transport/quic.ts';
import { Session } from '../core/protocol/session.ts';
import { selfSigned } from '../core/transport/tls.ts';
import { QueryClient } from '../core/client/query.ts';
import { LocalError, ProtocolError } from '../core/errors.ts';
import type { Message } from '../core/protocol/messages.ts';

/** How the fake load balancer answers the n-th PICK (1-based) it reads. */
type Behaviour = (n: number, seq: number, s: Session) => 'answer' | 'late' | 'never' | 'wrong-seq' | 'drain';

interface FakeLb {
  port: number;
  /** PICKs read, and the most read-but-unanswered at once (1: the server holds while answering). */
  picks: number;
  maxUnanswered: number;
  /** Server-side DFA events of the last session, in order. */
  events: string[];
  behaviour: Behaviour;
  stop(): Promise<void>;
}

async function fakeLb(): Promise<FakeLb> {
  const tls = await selfSigned(['127.0.0.1']);
  const sessions = new Set<Session>();
  let unanswered = 0;
  const lb: FakeLb = { port: 0, picks: 0, maxUnanswered: 0, events: [], behaviour: () => 'answer', stop: async () => {} };
  const answer = (s: Session, seq: number, server: string) => {
    unanswered--;
    if (!s.isClosed) s.send('PICK_RESPONSE', { seq, server, balancer: 'fake', why: 'test' });
  };
  const listener = await Listener.listen({
    host: '127.0.0.1',
    port: 0,
    ...tls,
    onChannel: (ch: Channel) => {
      lb.events = [];
      const s = new Session(ch, {
        role: 'server',
        observe: (dir, m) => lb.events.push(`${dir}:${m.type}`),
        onMessage: (m: Message, s) => {
          if (m.type === 'HELLO') s.send('ACK', { version: 1, node: 'fake-lb', role: 'loadbalancer', metrics: [] });
          else if (m.type === 'PICK') {
            // Requests that crossed our DRAIN are dropped (as the query port does).
            if (s.state === 'DRAINING') return;
            const n = ++lb.picks;
            unanswered++;
            lb.maxUnanswered = Math.max(lb.maxUnanswered, unanswered);
            const how = lb.behaviour(n, m.body.seq, s);
            if (how === 'answer') answer(s, m.body.seq, `10.0.0.${m.body.seq % 250}:80`);
            else if (how === 'late') setTimeout(() => answer(s, m.body.seq, `10.0.0.${m.body.seq % 250}:80`), 5 + (n % 4) * 5);
            else if (how === 'wrong-seq') answer(s, m.body.seq + 1000, '10.0.0.1:80');
            else if (how === 'drain') {
              unanswered--;
              s.send('DRAIN', { reason: 'test', graceMs: 1000 });
            }
            // 'never': held for good; the client's response timer ends it.
          } else if (m.type === 'TERMINATE') s.send('TERMINATE_ACK', {});
        },
        onClose: (_w, s) => sessions.delete(s),
      });
      sessions.add(s);
    },
  });
  lb.port = listener.port;
  lb.stop = async () => {
    for (const s of sessions) s.close('test over');
    await listener.stop();
  };
  return lb;
}

describe('Client pipelining (QueryClient over QUIC)', function () {
  this.timeout(20_000);
  let lb: FakeLb;
  before(async () => {
    lb = await fakeLb();
  });
  after(async () => lb.stop());
  beforeEach(() => {
    lb.picks = 0;
    lb.maxUnanswered = 0;
    lb.behaviour = () => 'answer';
  });

  it('concurrent PICKs on one client: each call gets its own answer, in order, at most `pipeline` written ahead; the server answers one at a time', async () => {
    lb.behaviour = () => 'late';
    const q = await QueryClient.open({ host: '127.0.0.1', port: lb.port, timeoutMs: 5000, pipeline: 4 });
    // The connection's frames out, sampled as answers come back: never more than 4 PICKs unanswered.
    const ch = (q as unknown as { session: Session }).session.channel;
    let answered = 0;
    let maxAhead = 0;
    const results = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const r = await q.pick(`key-${i}`);
        answered++;
        maxAhead = Math.max(maxAhead, ch.counters.framesOut - 1 - answered); // - HELLO
        return r;
      }),
    );
    // seq 1..20 in call order; the fake answers seq -> 10.0.0.seq.
    expect(results.map((r) => r.server)).to.deep.equal(Array.from({ length: 20 }, (_, i) => `10.0.0.${i + 1}:80`));
    expect(maxAhead).to.be.within(1, 4);
    expect(lb.picks).to.equal(20);
    expect(lb.maxUnanswered).to.equal(1);
    // The server's DFA saw each PICK answered before the next was taken.
    const picks = lb.events.filter((e) => e.endsWith('PICK') || e.endsWith('PICK_RESPONSE'));
    expect(picks).to.deep.equal(Array.from({ length: 20 }, () => ['in:PICK', 'out:PICK_RESPONSE']).flat());
    await q.close();
  });

  it('pipeline 1: concurrent calls wait their turn (one written at a time) and still all succeed', async () => {
    lb.behaviour = () => 'late';
    const q = await QueryClient.open({ host: '127.0.0.1', port: lb.port, timeoutMs: 5000, pipeline: 1 });
    const ch = (q as unknown as { session: Session }).session.channel;
    let answered = 0;
    let maxAhead = 0;
    const calls = Array.from({ length: 6 }, async () => {
      const r = await q.pick();
      answered++;
      maxAhead = Math.max(maxAhead, ch.counters.framesOut - 1 - answered);
      return r;
    });
    const settled = await Promise.allSettled(calls);
    // With pipeline 1 the session refuses a second outstanding request: the client serializes calls itself.
    expect(settled.every((s) => s.status === 'fulfilled'), JSON.stringify(settled.filter((s) => s.status === 'rejected').map((s) => String((s as PromiseRejectedResult).reason)))).to.equal(true);
    expect(maxAhead).to.be.at.most(1);
    await q.close();
  });

  it('an answer with the wrong seq fails the session: every outstanding call rejects with INVALID_MESSAGE, the earlier ones keep their answers', async () => {
    lb.behaviour = (n) => (n === 3 ? 'wrong-seq' : 'answer');
    const q = await QueryClient.open({ host: '127.0.0.1', port: lb.port, timeoutMs: 5000, pipeline: 8 });
    const settled = await Promise.allSettled(Array.from({ length: 6 }, () => q.pick()));
    expect(settled.slice(0, 2).map((s) => s.status)).to.deep.equal(['fulfilled', 'fulfilled']);
    for (const s of settled.slice(2)) {
      expect(s.status).to.equal('rejected');
      expect((s as PromiseRejectedResult).reason).to.be.instanceOf(ProtocolError);
      expect(String((s as PromiseRejectedResult).reason.message)).to.match(/does not answer request seq 3/);
    }
    await q.close();
  });

  it('DRAIN in the middle of a pipeline: the calls still outstanding reject (the server drops them), later calls are refused', async () => {
    lb.behaviour = (n) => (n === 2 ? 'drain' : 'answer');
    const q = await QueryClient.open({ host: '127.0.0.1', port: lb.port, timeoutMs: 5000, pipeline: 8 });
    const settled = await Promise.allSettled(Array.from({ length: 5 }, () => q.pick()));
    expect(settled[0]!.status).to.equal('fulfilled');
    for (const s of settled.slice(1)) {
      expect(s.status).to.equal('rejected');
      expect((s as PromiseRejectedResult).reason).to.be.instanceOf(LocalError);
      expect(String((s as PromiseRejectedResult).reason.message)).to.match(/draining/);
    }
    const after = await q.pick().then(
      () => 'answered',
      (e: Error) => e.message,
    );
    expect(after).to.match(/cannot send PICK|draining/);
    await q.close();
  });

  it('an answer that never comes: the response timer ends the session and every outstanding call rejects with RESPONSE_TIMEOUT', async () => {
    lb.behaviour = (n) => (n === 2 ? 'never' : 'answer');
    const q = await QueryClient.open({ host: '127.0.0.1', port: lb.port, timeoutMs: 300, pipeline: 4 });
    const t0 = performance.now();
    const settled = await Promise.allSettled(Array.from({ length: 4 }, () => q.pick()));
    expect(settled[0]!.status).to.equal('fulfilled');
    for (const s of settled.slice(1)) {
      expect(s.status).to.equal('rejected');
      expect((s as PromiseRejectedResult).reason).to.be.instanceOf(ProtocolError);
      expect((s as PromiseRejectedResult).reason.kind).to.equal('RESPONSE_TIMEOUT');
    }
    // Bounded by the timeout of the request that got no answer, not by one timeout per call.
    expect(performance.now() - t0).to.be.below(3000);
    await q.close();
  });
});
