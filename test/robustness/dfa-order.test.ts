/**
 * Every message type, out of DFA order or in it, sent by a raw peer to a real agent and a real
 * load balancer's query port, before HELLO and after ACK. What the server's table in
 * core/protocol/dfa.ts does not allow must be answered with ERROR 105 UNEXPECTED_MESSAGE and a close;
 * what it allows gets the answer the spec names. Honest clients are served throughout.
 */
import { expect } from 'chai';
import { encodeFrame } from '../../core/protocol/codec.ts';
import { SERVER_TABLE, type ServerSessionState } from '../../core/protocol/dfa.ts';
import { codeName } from '../../core/protocol/session.ts';
import { MESSAGE_NAMES, type Bodies, type Message, type MessageName } from '../../core/protocol/messages.ts';
import { RawPeer, HELLO_CHECKER, HELLO_QUERY } from '../helpers/rawpeer.ts';
import { startRig, type Rig } from './honest.ts';

/** A schema-valid body for every message type. */
const SAMPLE: { [K in MessageName]: Bodies[K] } = {
  HELLO: { versions: [1], role: 'checker', node: 'raw' },
  ACK: { version: 1, node: 'raw', role: 'agent', metrics: [] },
  HEALTH_REQUEST: { seq: 1 },
  HEALTH_RESPONSE: { seq: 1, metrics: { cpu: 1 }, ageMs: 0, verdict: 'SERVING', admin: 'READY', weight: 100 },
  CONFIG_UPDATE: { seq: 1 },
  CONFIG_ACK: { seq: 1, metrics: [], reportIntervalMs: 0 },
  ERROR: { code: 500, reason: 'raw peer error' },
  TERMINATE: {},
  TERMINATE_ACK: {},
  DRAIN: { graceMs: 0 },
  PICK: { seq: 1 },
  PICK_RESPONSE: { seq: 1, server: null },
  STATUS: { seq: 1 },
  STATUS_RESPONSE: { seq: 1, node: 'raw', servers: [] },
  HEALTH_REPORT: { metrics: { cpu: 1 }, ageMs: 0, verdict: 'SERVING', admin: 'READY', weight: 100 },
  WATCH: { seq: 1 },
  WATCH_UPDATE: { seq: 1, run: 'raw', version: 1, kind: 'full', members: [] },
};

type Outcome = { answer: MessageName } | { error: string } | { closedClean: true };

/** What the spec says the server does with `type` in `state`, on this kind of port. */
function expected(port: 'agent' | 'lb', state: ServerSessionState, type: MessageName): Outcome {
  if (SERVER_TABLE[state][`recv:${type}`] === undefined) return { error: 'UNEXPECTED_MESSAGE' };
  const serves: Partial<Record<MessageName, MessageName>> =
    port === 'agent'
      ? { HELLO: 'ACK', HEALTH_REQUEST: 'HEALTH_RESPONSE', CONFIG_UPDATE: 'CONFIG_ACK', TERMINATE: 'TERMINATE_ACK' }
      : { HELLO: 'ACK', PICK: 'PICK_RESPONSE', STATUS: 'STATUS_RESPONSE', WATCH: 'WATCH_UPDATE', TERMINATE: 'TERMINATE_ACK' };
  if (type === 'ERROR') return { closedClean: true };
  const answer = serves[type];
  return answer ? { answer } : { error: 'UNSUPPORTED_REQUEST' };
}

describe('Robustness: messages out of DFA order', function () {
  this.timeout(90_000);
  let rig: Rig;

  before(async () => {
    rig = await startRig({ serverArgs: ['--hello-timeout', '3'], lbArgs: ['--hello-timeout', '3'] });
  });
  after(async () => {
    const bad = rig?.badTransitions() ?? [];
    await rig?.stop();
    expect(bad).to.deep.equal([]);
  });

  for (const port of ['agent', 'lb'] as const) {
    for (const state of ['AWAIT_HELLO', 'READY'] as const) {
      it(`${port === 'agent' ? "agent's port" : "load balancer's query port"}, in ${state}: every message type gets what the table says`, async () => {
        const hello = port === 'agent' ? HELLO_CHECKER : HELLO_QUERY;
        const results = await Promise.all(
          MESSAGE_NAMES.map(async (type) => {
            const body = type === 'HELLO' && port === 'lb' ? { ...SAMPLE.HELLO, role: 'query' } : SAMPLE[type];
            const peer = await RawPeer.open({ port: port === 'agent' ? rig.serverPort : rig.lbPort });
            if (state === 'READY') {
              await peer.send(hello());
              await peer.waitFor('ACK');
            }
            await peer.send(encodeFrame({ type, body } as Message));
            const want = expected(port, state, type);
            let got: string;
            if ('answer' in want) {
              // (A second HELLO is not in the READY row, so an expected ACK is always the first.)
              await peer.waitFor(want.answer).catch(() => undefined);
              const n = peer.received.filter((m) => m.type === want.answer).length;
              got = n === 1 && !peer.error ? `answer ${want.answer}` : `got ${peer.received.map((m) => m.type).join(',')}`;
              await peer.close();
            } else {
              const r = await peer.closedWith();
              got = 'error' in want ? `error ${codeName(r.code)}` : r.code === 0 && !peer.error ? 'closed clean' : `closed with ${codeName(r.code)}`;
            }
            const wanted = 'answer' in want ? `answer ${want.answer}` : 'error' in want ? `error ${want.error}` : 'closed clean';
            return { type, got, wanted };
          }),
        );
        expect(results.filter((r) => r.got !== r.wanted)).to.deep.equal([]);
        // Sanity: the table really forbids most messages here (this test is not vacuous).
        expect(results.filter((r) => r.wanted === 'error UNEXPECTED_MESSAGE').length).to.be.greaterThan(5);
        await rig.expectHealthy();
      });
    }
  }

  it('the cases the issue names: HEALTH_REQUEST before HELLO, a second HELLO, an ACK nobody asked for', async () => {
    const cases: Array<[string, (p: RawPeer) => Promise<void>]> = [
      ['HEALTH_REQUEST before HELLO', async (p) => p.send(encodeFrame({ type: 'HEALTH_REQUEST', body: { seq: 1 } }))],
      [
        'a second HELLO',
        async (p) => {
          await p.send(HELLO_CHECKER());
          await p.waitFor('ACK');
          await p.send(HELLO_CHECKER());
        },
      ],
      ['an unasked ACK', async (p) => p.send(encodeFrame({ type: 'ACK', body: SAMPLE.ACK }))],
      [
        'an ACK after HELLO',
        async (p) => {
          await p.send(HELLO_CHECKER());
          await p.waitFor('ACK');
          await p.send(encodeFrame({ type: 'ACK', body: SAMPLE.ACK }));
        },
      ],
      [
        'a HEALTH_RESPONSE to the agent',
        async (p) => {
          await p.send(HELLO_CHECKER());
          await p.waitFor('ACK');
          await p.send(encodeFrame({ type: 'HEALTH_RESPONSE', body: SAMPLE.HEALTH_RESPONSE }));
        },
      ],
    ];
    for (const [name, act] of cases) {
      const peer = await RawPeer.open({ port: rig.serverPort });
      await act(peer);
      const r = await peer.closedWith();
      expect(codeName(r.code), name).to.equal('UNEXPECTED_MESSAGE');
      expect(r.reason, name).to.match(/not allowed in state/);
    }
    await rig.expectHealthy();
  });
});
