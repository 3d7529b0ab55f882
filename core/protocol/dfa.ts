/**
 * The QHCP state machines, held as data: one table per role, state x event -> next state.
 *
 * The "server" role accepts connections (the agent, and the load balancer's query port); the
 * "client" role opens them (the load balancer checking agents, and `qhcp status` / `qhcp pick`).
 * An event is a message sent ("send:X"), a message received ("recv:X") or a timer firing
 * ("timeout:hello", "timeout:response"). A received message the table does not list for the
 * current state is a protocol violation (ERROR 105 UNEXPECTED_MESSAGE, then close); a send the
 * table does not list is a bug in this implementation and is refused before it reaches the wire.
 *
 * docs/protocol.md holds the same tables; test/dfa.test.ts fails when they differ.
 */
import { ProtocolError, LocalError } from '../errors.ts';
import type { MessageName } from './messages.ts';

export type Role = 'server' | 'client';
export type TimeoutName = 'hello' | 'response';
export type DfaEvent = `send:${MessageName}` | `recv:${MessageName}` | `timeout:${TimeoutName}`;

export const SERVER_STATES = [
  'AWAIT_HELLO',
  'AUTH',
  'READY',
  'HEALTH_PENDING',
  'CONFIG_PENDING',
  'PICK_PENDING',
  'STATUS_PENDING',
  'WATCHING',
  'DRAINING',
  'TERMINATING',
  'CLOSED',
] as const;
export const CLIENT_STATES = [
  'START',
  'AWAIT_ACK',
  'READY',
  'AWAIT_HEALTH',
  'AWAIT_CONFIG',
  'AWAIT_PICK',
  'AWAIT_STATUS',
  'WATCHING',
  'DRAINING',
  'AWAIT_TERMINATE_ACK',
  'CLOSED',
] as const;
export type ServerSessionState = (typeof SERVER_STATES)[number];
export type ClientSessionState = (typeof CLIENT_STATES)[number];
export type State = ServerSessionState | ClientSessionState;

export type Table<S extends string> = Record<S, Partial<Record<DfaEvent, S>>>;

/** Either side may send or receive ERROR in any open state; both end the session. */
const ERRORS = { 'send:ERROR': 'CLOSED', 'recv:ERROR': 'CLOSED' } as const;

export const SERVER_TABLE: Table<ServerSessionState> = {
  AWAIT_HELLO: { 'recv:HELLO': 'AUTH', 'timeout:hello': 'CLOSED', ...ERRORS },
  AUTH: { 'send:ACK': 'READY', ...ERRORS },
  READY: {
    'recv:HEALTH_REQUEST': 'HEALTH_PENDING',
    'recv:CONFIG_UPDATE': 'CONFIG_PENDING',
    'recv:PICK': 'PICK_PENDING',
    'recv:STATUS': 'STATUS_PENDING',
    'recv:WATCH': 'WATCHING',
    'recv:TERMINATE': 'TERMINATING',
    'send:HEALTH_REPORT': 'READY',
    'send:DRAIN': 'DRAINING',
    ...ERRORS,
  },
  // TERMINATE may arrive while a request is pending (the client ended the session gracefully
  // without waiting): the server may still send that request's answer, then TERMINATE_ACK.
  HEALTH_PENDING: { 'send:HEALTH_RESPONSE': 'READY', 'send:HEALTH_REPORT': 'HEALTH_PENDING', 'send:DRAIN': 'DRAINING', 'recv:TERMINATE': 'TERMINATING', ...ERRORS },
  CONFIG_PENDING: { 'send:CONFIG_ACK': 'READY', 'send:HEALTH_REPORT': 'CONFIG_PENDING', 'send:DRAIN': 'DRAINING', 'recv:TERMINATE': 'TERMINATING', ...ERRORS },
  PICK_PENDING: { 'send:PICK_RESPONSE': 'READY', 'send:DRAIN': 'DRAINING', 'recv:TERMINATE': 'TERMINATING', ...ERRORS },
  STATUS_PENDING: { 'send:STATUS_RESPONSE': 'READY', 'send:DRAIN': 'DRAINING', 'recv:TERMINATE': 'TERMINATING', ...ERRORS },
  // A WATCH session is given over to the stream of updates: the client asks nothing more on it.
  WATCHING: { 'send:WATCH_UPDATE': 'WATCHING', 'send:DRAIN': 'DRAINING', 'recv:TERMINATE': 'TERMINATING', ...ERRORS },
  DRAINING: {
    // Requests that crossed our DRAIN on the wire are dropped, not answered and not errors.
    'recv:HEALTH_REQUEST': 'DRAINING',
    'recv:CONFIG_UPDATE': 'DRAINING',
    'recv:PICK': 'DRAINING',
    'recv:STATUS': 'DRAINING',
    'recv:WATCH': 'DRAINING',
    'recv:TERMINATE': 'TERMINATING',
    ...ERRORS,
  },
  TERMINATING: {
    'send:HEALTH_RESPONSE': 'TERMINATING',
    'send:CONFIG_ACK': 'TERMINATING',
    'send:PICK_RESPONSE': 'TERMINATING',
    'send:STATUS_RESPONSE': 'TERMINATING',
    'send:TERMINATE_ACK': 'CLOSED',
    ...ERRORS,
  },
  CLOSED: {},
};

export const CLIENT_TABLE: Table<ClientSessionState> = {
  START: { 'send:HELLO': 'AWAIT_ACK' },
  AWAIT_ACK: { 'recv:ACK': 'READY', 'timeout:response': 'CLOSED', ...ERRORS },
  READY: {
    'send:HEALTH_REQUEST': 'AWAIT_HEALTH',
    'send:CONFIG_UPDATE': 'AWAIT_CONFIG',
    'send:PICK': 'AWAIT_PICK',
    'send:STATUS': 'AWAIT_STATUS',
    'send:WATCH': 'WATCHING',
    'send:TERMINATE': 'AWAIT_TERMINATE_ACK',
    'recv:HEALTH_REPORT': 'READY',
    'recv:DRAIN': 'DRAINING',
    ...ERRORS,
  },
  AWAIT_HEALTH: {
    'recv:HEALTH_RESPONSE': 'READY',
    'recv:HEALTH_REPORT': 'AWAIT_HEALTH',
    'recv:DRAIN': 'DRAINING',
    'send:TERMINATE': 'AWAIT_TERMINATE_ACK',
    'timeout:response': 'CLOSED',
    ...ERRORS,
  },
  AWAIT_CONFIG: {
    'recv:CONFIG_ACK': 'READY',
    'recv:HEALTH_REPORT': 'AWAIT_CONFIG',
    'recv:DRAIN': 'DRAINING',
    'send:TERMINATE': 'AWAIT_TERMINATE_ACK',
    'timeout:response': 'CLOSED',
    ...ERRORS,
  },
  AWAIT_PICK: { 'recv:PICK_RESPONSE': 'READY', 'recv:DRAIN': 'DRAINING', 'send:TERMINATE': 'AWAIT_TERMINATE_ACK', 'timeout:response': 'CLOSED', ...ERRORS },
  AWAIT_STATUS: { 'recv:STATUS_RESPONSE': 'READY', 'recv:DRAIN': 'DRAINING', 'send:TERMINATE': 'AWAIT_TERMINATE_ACK', 'timeout:response': 'CLOSED', ...ERRORS },
  // The first WATCH_UPDATE answers WATCH (the response timer runs until it comes); the rest are pushes.
  WATCHING: { 'recv:WATCH_UPDATE': 'WATCHING', 'recv:DRAIN': 'DRAINING', 'send:TERMINATE': 'AWAIT_TERMINATE_ACK', 'timeout:response': 'CLOSED', ...ERRORS },
  DRAINING: { 'send:TERMINATE': 'AWAIT_TERMINATE_ACK', ...ERRORS },
  AWAIT_TERMINATE_ACK: {
    'recv:TERMINATE_ACK': 'CLOSED',
    'recv:HEALTH_REPORT': 'AWAIT_TERMINATE_ACK',
    'recv:DRAIN': 'AWAIT_TERMINATE_ACK',
    // The answer to a request pending when TERMINATE was sent, crossing it: read and dropped.
    'recv:HEALTH_RESPONSE': 'AWAIT_TERMINATE_ACK',
    'recv:CONFIG_ACK': 'AWAIT_TERMINATE_ACK',
    'recv:PICK_RESPONSE': 'AWAIT_TERMINATE_ACK',
    'recv:STATUS_RESPONSE': 'AWAIT_TERMINATE_ACK',
    'recv:WATCH_UPDATE': 'AWAIT_TERMINATE_ACK',
    'timeout:response': 'CLOSED',
    ...ERRORS,
  },
  CLOSED: {},
};

export const TABLES = { server: SERVER_TABLE, client: CLIENT_TABLE } as const;
export const INITIAL_STATE = { server: 'AWAIT_HELLO', client: 'START' } as const;
export const STATES = { server: SERVER_STATES, client: CLIENT_STATES } as const;

/** One session's position in its role's table. */
export class Dfa {
  private current: State;
  private readonly table: Table<State>;

  constructor(readonly role: Role) {
    this.table = TABLES[role] as Table<State>;
    this.current = INITIAL_STATE[role];
  }

  get state(): State {
    return this.current;
  }

  /** The state `event` leads to, or undefined when the table does not allow it. */
  peek(event: DfaEvent): State | undefined {
    return this.table[this.current][event];
  }

  /**
   * Takes the transition for `event`.
   * @throws ProtocolError UNEXPECTED_MESSAGE for a received message the table does not allow
   * @throws LocalError for a send or timeout the table does not allow (a bug here, not the peer's)
   */
  apply(event: DfaEvent): State {
    const next = this.peek(event);
    if (next === undefined) {
      const [kind, what] = event.split(':') as [string, string];
      if (kind === 'recv') {
        throw new ProtocolError('UNEXPECTED_MESSAGE', `${what} is not allowed in state ${this.current}`);
      }
      throw new LocalError('QHCP_ERR_CLOSED', `${this.role} cannot ${kind} ${what} in state ${this.current}`);
    }
    this.current = next;
    return next;
  }

  /** Forces CLOSED: the connection went away underneath the session. */
  close(): void {
    this.current = 'CLOSED';
  }
}
