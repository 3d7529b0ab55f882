/**
 * The two state machines: every (state, event) pair of each role behaves as its table says,
 * the tables in docs/protocol.md are the tables in core/protocol/dfa.ts, and the tables make sense as
 * graphs and as a pair (what one side may send, the other side accepts, even when messages
 * cross on the wire).
 */
import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import { Dfa, TABLES, STATES, INITIAL_STATE, SERVER_TABLE, CLIENT_TABLE, type DfaEvent, type Role, type State, type Table } from '../core/protocol/dfa.ts';
import { MESSAGE_NAMES, type MessageName } from '../core/protocol/messages.ts';
import { ProtocolError, LocalError, WIRE_ERRORS } from '../core/errors.ts';
import { renderDfaTable, renderDfaDiagram, extractSection, renderSection, run } from '../scripts/gen-protocol-tables.ts';

const SPEC = readFileSync(new URL('../docs/protocol.md', import.meta.url), 'utf8');
const ROLES: Role[] = ['server', 'client'];

/** Every event there is: send and receive of every message, and both timers. */
const ALL_EVENTS: DfaEvent[] = [
  ...MESSAGE_NAMES.map((m) => `send:${m}` as DfaEvent),
  ...MESSAGE_NAMES.map((m) => `recv:${m}` as DfaEvent),
  'timeout:hello',
  'timeout:response',
];

const tableOf = (role: Role): Table<string> => TABLES[role] as Table<string>;

/** Shortest event path from the initial state to every reachable state (BFS over the table). */
function pathsFrom(role: Role): Map<string, DfaEvent[]> {
  const table = tableOf(role);
  const paths = new Map<string, DfaEvent[]>([[INITIAL_STATE[role], []]]);
  const queue: string[] = [INITIAL_STATE[role]];
  while (queue.length) {
    const s = queue.shift()!;
    for (const [event, next] of Object.entries(table[s] ?? {}) as Array<[DfaEvent, string]>) {
      if (!paths.has(next)) {
        paths.set(next, [...paths.get(s)!, event]);
        queue.push(next);
      }
    }
  }
  return paths;
}

/** A Dfa of `role` driven to `state` through the public API. */
function dfaIn(role: Role, state: string): Dfa {
  const path = pathsFrom(role).get(state);
  if (!path) throw new Error(`${role} state ${state} is unreachable`);
  const dfa = new Dfa(role);
  for (const e of path) dfa.apply(e);
  expect(dfa.state).to.equal(state);
  return dfa;
}

/** The `| State | \`event\` | Next state |` rows between a section's markers, as a table. */
function parseDocTable(doc: string, section: string): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  let header = false;
  for (const line of extractSection(doc, section).split(/\r?\n/)) {
    if (/^\|\s*State\s*\|\s*Event\s*\|\s*Next state\s*\|\s*$/.test(line)) {
      header = true;
      continue;
    }
    if (/^\|\s*-+\s*\|/.test(line) || !line.startsWith('|')) continue;
    const m = /^\|\s*([A-Z_]+)\s*\|\s*`?([a-z]+:[A-Za-z_]+)`?\s*\|\s*([A-Z_]+)\s*\|\s*$/.exec(line);
    if (!m) throw new Error(`cannot read table row: ${line}`);
    const [, state, event, next] = m as unknown as [string, string, string, string];
    out[state] ??= {};
    if (event in out[state]!) throw new Error(`row repeated: ${line}`);
    out[state]![event] = next;
  }
  if (!header) throw new Error(`no | State | Event | Next state | header in ${section}`);
  return out;
}

/** Which side sends each message, from the spec's message table ("C→S", "S→C", "both"). */
function specDirections(doc: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of doc.matchAll(/^\| `0x[0-9a-f]{2}` \| ([A-Z_]+) \| ([^|]+?) \|/gm)) out[m[1]!] = m[2]!;
  return out;
}

describe('Dfa', () => {
  for (const role of ROLES) {
    describe(`${role} role`, () => {
      const table = tableOf(role);

      it('starts in its initial state', () => {
        expect(new Dfa(role).state).to.equal(INITIAL_STATE[role]);
        expect(new Dfa(role).role).to.equal(role);
      });

      for (const state of STATES[role]) {
        it(`${state}: every event does what the table says`, () => {
          for (const event of ALL_EVENTS) {
            const dfa = dfaIn(role, state);
            const next = table[state]?.[event];
            if (next !== undefined) {
              expect(dfa.peek(event), event).to.equal(next);
              expect(dfa.apply(event), event).to.equal(next);
              expect(dfa.state, event).to.equal(next);
              continue;
            }
            expect(dfa.peek(event), event).to.equal(undefined);
            let thrown: unknown;
            try {
              dfa.apply(event);
            } catch (e) {
              thrown = e;
            }
            expect(thrown, `${state} + ${event} must throw`).to.be.instanceOf(Error);
            if (event.startsWith('recv:')) {
              expect(thrown, event).to.be.instanceOf(ProtocolError);
              const err = thrown as ProtocolError;
              expect(err.kind).to.equal('UNEXPECTED_MESSAGE');
              expect(err.wire).to.equal(105);
              expect(err.code).to.equal('QHCP_ERR_UNEXPECTED_MESSAGE');
              expect(err.message).to.contain(event.slice(5)).and.to.contain(state);
            } else {
              expect(thrown, event).to.be.instanceOf(LocalError);
              expect(thrown, event).not.to.be.instanceOf(ProtocolError);
            }
            expect(dfa.state, `${event} refused must leave the state alone`).to.equal(state);
          }
        });
      }

      it('close() moves any state to CLOSED', () => {
        for (const state of STATES[role]) {
          const dfa = dfaIn(role, state);
          dfa.close();
          expect(dfa.state).to.equal('CLOSED');
        }
      });
    });
  }

  describe('graceful end while a request is pending (docs/protocol.md, TERMINATE)', () => {
    const walk = (role: Role, events: DfaEvent[]) => {
      const d = new Dfa(role);
      return events.map((e) => d.apply(e));
    };
    for (const [req, res] of [
      ['HEALTH_REQUEST', 'HEALTH_RESPONSE'],
      ['CONFIG_UPDATE', 'CONFIG_ACK'],
      ['PICK', 'PICK_RESPONSE'],
      ['STATUS', 'STATUS_RESPONSE'],
    ] as const) {
      it(`${req} pending: the client may TERMINATE; the crossing ${res} is accepted, then TERMINATE_ACK ends it`, () => {
        expect(walk('client', ['send:HELLO', 'recv:ACK', `send:${req}`, 'send:TERMINATE', `recv:${res}`, 'recv:TERMINATE_ACK']).at(-1)).to.equal('CLOSED');
        expect(walk('client', ['send:HELLO', 'recv:ACK', `send:${req}`, 'send:TERMINATE', 'recv:TERMINATE_ACK']).at(-1)).to.equal('CLOSED');
        expect(walk('server', ['recv:HELLO', 'send:ACK', `recv:${req}`, 'recv:TERMINATE', `send:${res}`, 'send:TERMINATE_ACK']).at(-1)).to.equal('CLOSED');
        expect(walk('server', ['recv:HELLO', 'send:ACK', `recv:${req}`, 'recv:TERMINATE', 'send:TERMINATE_ACK']).at(-1)).to.equal('CLOSED');
      });
    }
    it('a second request after TERMINATE is still a violation', () => {
      const d = new Dfa('server');
      for (const e of ['recv:HELLO', 'send:ACK', 'recv:HEALTH_REQUEST', 'recv:TERMINATE'] as DfaEvent[]) d.apply(e);
      expect(() => d.apply('recv:HEALTH_REQUEST')).to.throw(ProtocolError);
    });
  });

  describe('tables as graphs', () => {
    for (const role of ROLES) {
      const table = tableOf(role);
      const states = STATES[role] as readonly string[];

      it(`${role}: has exactly its states, and only known events and next states`, () => {
        expect(Object.keys(table)).to.deep.equal([...states]);
        for (const s of states) {
          for (const [event, next] of Object.entries(table[s]!)) {
            expect(ALL_EVENTS, `${s} ${event}`).to.include(event);
            expect(states, `${s} ${event}`).to.include(next);
          }
        }
      });

      it(`${role}: CLOSED has no transitions`, () => {
        expect(table.CLOSED).to.deep.equal({});
      });

      it(`${role}: every state is reachable from ${INITIAL_STATE[role]}`, () => {
        expect([...pathsFrom(role).keys()].sort()).to.deep.equal([...states].sort());
      });

      it(`${role}: every state but CLOSED can reach CLOSED`, () => {
        for (const s of states) {
          if (s === 'CLOSED') continue;
          const seen = new Set([s]);
          const queue = [s];
          while (queue.length) for (const n of Object.values(table[queue.shift()!]!)) if (!seen.has(n!)) (seen.add(n!), queue.push(n!));
          expect(seen.has('CLOSED'), s).to.equal(true);
        }
      });

      it(`${role}: every open state but the first takes ERROR both ways, into CLOSED`, () => {
        for (const s of states) {
          if (s === 'CLOSED' || s === 'START') continue;
          expect(table[s]!['send:ERROR'], s).to.equal('CLOSED');
          expect(table[s]!['recv:ERROR'], s).to.equal('CLOSED');
        }
      });
    }

    it('each role sends only what its side sends and receives only what the other side sends (per the spec)', () => {
      const dir = specDirections(SPEC);
      expect(Object.keys(dir).sort()).to.deep.equal([...MESSAGE_NAMES].sort());
      const sends = { server: ['S→C', 'both'], client: ['C→S', 'both'] };
      for (const role of ROLES) {
        const other: Role = role === 'server' ? 'client' : 'server';
        for (const row of Object.values(tableOf(role))) {
          for (const event of Object.keys(row)) {
            const [kind, what] = event.split(':') as [string, string];
            if (kind === 'send') expect(sends[role], `${role} ${event}`).to.include(dir[what]);
            if (kind === 'recv') expect(sends[other], `${role} ${event}`).to.include(dir[what]);
          }
        }
      }
      expect(Object.keys(SERVER_TABLE.AWAIT_HELLO)).to.include('timeout:hello');
      expect(JSON.stringify(CLIENT_TABLE)).not.to.contain('timeout:hello');
      expect(JSON.stringify(SERVER_TABLE)).not.to.contain('timeout:response');
    });

    it('the two tables agree: whatever one side sends, the other accepts, even when messages cross', () => {
      // A model of one connection: both machines, and a FIFO queue of frames each way. Each
      // step, one side either sends something its table and its session kind allow, lets a
      // timer fire, or receives the next frame. A frame reaching a side that is not CLOSED must
      // be allowed by its table. The server cannot speak before the client has (the client opens
      // the stream). HEALTH_REPORT only flows on checker sessions, PICK/STATUS only on query ones.
      const KINDS: Record<'checker' | 'query', { client: MessageName[]; server: MessageName[] }> = {
        checker: { client: ['HELLO', 'HEALTH_REQUEST', 'CONFIG_UPDATE', 'TERMINATE', 'ERROR'], server: ['ACK', 'HEALTH_RESPONSE', 'CONFIG_ACK', 'HEALTH_REPORT', 'DRAIN', 'TERMINATE_ACK', 'ERROR'] },
        query: { client: ['HELLO', 'PICK', 'STATUS', 'TERMINATE', 'ERROR'], server: ['ACK', 'PICK_RESPONSE', 'STATUS_RESPONSE', 'DRAIN', 'TERMINATE_ACK', 'ERROR'] },
      };
      const MAX_QUEUE = 3;
      const problems: string[] = [];
      let explored = 0;
      for (const [kind, allowed] of Object.entries(KINDS)) {
        type Config = { c: string; s: string; toS: MessageName[]; toC: MessageName[] };
        const key = (x: Config) => `${x.c}|${x.s}|${x.toS.join(',')}|${x.toC.join(',')}`;
        const start: Config = { c: INITIAL_STATE.client, s: INITIAL_STATE.server, toS: [], toC: [] };
        const seen = new Set([key(start)]);
        const queue = [start];
        const push = (x: Config) => {
          if (!seen.has(key(x))) (seen.add(key(x)), queue.push(x));
        };
        while (queue.length) {
          const x = queue.shift()!;
          explored++;
          const clientSpoke = x.c !== INITIAL_STATE.client;
          for (const [side, state, out, mine] of [
            ['client', x.c, x.toS, allowed.client],
            ['server', x.s, x.toC, allowed.server],
          ] as const) {
            if (state === 'CLOSED' || (side === 'server' && !clientSpoke)) continue;
            const table = tableOf(side);
            for (const [event, next] of Object.entries(table[state]!)) {
              const [k, what] = event.split(':') as [string, MessageName];
              if (k === 'timeout') push(side === 'client' ? { ...x, c: next! } : { ...x, s: next! });
              if (k !== 'send' || !mine.includes(what) || out.length >= MAX_QUEUE) continue;
              push(side === 'client' ? { ...x, c: next!, toS: [...x.toS, what] } : { ...x, s: next!, toC: [...x.toC, what] });
            }
          }
          // Deliveries.
          if (x.toS.length) {
            const [m, ...rest] = x.toS;
            const next = x.s === 'CLOSED' ? 'CLOSED' : SERVER_TABLE[x.s as keyof typeof SERVER_TABLE][`recv:${m!}`];
            if (next === undefined) problems.push(`${kind}: server in ${x.s} cannot take ${m} (client in ${x.c})`);
            else push({ ...x, s: next, toS: rest });
          }
          if (x.toC.length) {
            const [m, ...rest] = x.toC;
            const next = x.c === 'CLOSED' ? 'CLOSED' : CLIENT_TABLE[x.c as keyof typeof CLIENT_TABLE][`recv:${m!}`];
            if (next === undefined) problems.push(`${kind}: client in ${x.c} cannot take ${m} (server in ${x.s})`);
            else push({ ...x, c: next, toC: rest });
          }
        }
      }
      expect(explored).to.be.greaterThan(100);
      expect([...new Set(problems)]).to.deep.equal([]);
    });
  });

  describe('docs/protocol.md', () => {
    for (const role of ROLES) {
      it(`has the ${role} table exactly as rendered from core/protocol/dfa.ts`, () => {
        expect(extractSection(SPEC, `dfa:${role}`)).to.equal(renderDfaTable(role));
        expect(renderSection(`dfa:${role}`)).to.equal(renderDfaTable(role));
      });

      it(`has the ${role} Mermaid diagram exactly as rendered from core/protocol/dfa.ts`, () => {
        const diagram = extractSection(SPEC, `dfa:${role}-diagram`);
        expect(diagram).to.equal(renderDfaDiagram(role));
        expect(diagram).to.match(/^```mermaid\nstateDiagram-v2\n/);
      });

      it(`has a ${role} table that reads back as the code's table (independent parse)`, () => {
        const parsed = parseDocTable(SPEC, `dfa:${role}`);
        const table = tableOf(role);
        const expected: Record<string, Record<string, string>> = {};
        for (const s of STATES[role]) if (Object.keys(table[s]!).length) expected[s] = { ...table[s] } as Record<string, string>;
        expect(parsed).to.deep.equal(expected);
        // Same order: states as in the state list, events in the table's key order.
        expect(Object.keys(parsed)).to.deep.equal((STATES[role] as readonly string[]).filter((s) => s in parsed));
        for (const s of Object.keys(parsed)) expect(Object.keys(parsed[s]!), s).to.deep.equal(Object.keys(table[s]!));
      });

      it(`states below the ${role} table what happens to everything else`, () => {
        const text = extractSection(SPEC, `dfa:${role}`);
        expect(text).to.match(/ERROR 105 UNEXPECTED_MESSAGE/);
        expect(text).to.match(/moves any state to CLOSED/);
        expect(WIRE_ERRORS.UNEXPECTED_MESSAGE.wire).to.equal(105);
      });
    }

    it('is up to date with every generated section (what --check verifies)', () => {
      expect(run(true)).to.deep.equal([]);
    });
  });
});
