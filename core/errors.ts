/**
 * Every error qhcp raises, in one place.
 *
 * Wire errors travel in an ERROR frame and as the QUIC application close code: their numbers
 * are part of the protocol (docs/protocol.md, "Error codes") and are never reused. Local errors
 * (config, CLI, plugins) never go on the wire; they carry a stable `code` string only.
 * test/errors.test.ts fails when a code here is missing from the docs.
 */

/** Wire error kinds: name -> numeric code and the one-line meaning written in the spec. */
export const WIRE_ERRORS = {
  MALFORMED_FRAME: { wire: 100, description: 'the bytes do not decode as a frame (bad header or payload is not JSON)' },
  FRAME_TOO_LARGE: { wire: 101, description: 'the declared payload length exceeds the maximum frame size' },
  UNSUPPORTED_VERSION: { wire: 102, description: 'the frame version, or every version offered in HELLO, is unsupported' },
  UNKNOWN_MESSAGE_TYPE: { wire: 103, description: 'the frame type byte names no message' },
  INVALID_MESSAGE: { wire: 104, description: "a message's fields do not validate against its schema" },
  UNEXPECTED_MESSAGE: { wire: 105, description: 'the DFA does not allow this message in the current state' },
  HELLO_TIMEOUT: { wire: 106, description: 'no HELLO arrived within the HELLO timeout' },
  RESPONSE_TIMEOUT: { wire: 107, description: 'a response did not arrive within its timeout' },
  UNSUPPORTED_REQUEST: { wire: 108, description: 'the request is valid but this role does not serve it (e.g. PICK to an agent)' },
  EXTRA_STREAM: { wire: 109, description: 'a stream beyond the single control stream was opened' },
  TRUNCATED_FRAME: { wire: 110, description: 'the control stream ended or was reset inside a frame' },
  AUTH_REQUIRED: { wire: 200, description: 'the server requires credentials and HELLO carried none (no token, or no client certificate)' },
  AUTH_INVALID: { wire: 201, description: 'the credentials are malformed or too large' },
  AUTH_EXPIRED: { wire: 202, description: 'the token (exp, with the allowed clock skew) or the client certificate has expired' },
  AUTH_NOT_YET_VALID: { wire: 203, description: 'the token (nbf/iat) or the client certificate is not valid yet' },
  AUTH_BAD_SIGNATURE: { wire: 204, description: 'the token signature does not verify, or the client certificate does not chain to a trusted CA' },
  AUTH_BAD_CLAIM: { wire: 205, description: "issuer, audience or another required claim does not match (a client certificate: its names or purpose)" },
  AUTH_ALG_REJECTED: { wire: 206, description: 'the token algorithm is not allowed (e.g. alg none)' },
  AUTH_REVOKED: { wire: 207, description: 'the client certificate is revoked (a CRL or the revoked-serial list names it)' },
  TOO_MANY_CONNECTIONS: { wire: 300, description: 'the connection limit is reached; try later' },
  SHUTTING_DOWN: { wire: 301, description: 'the peer is shutting down' },
  SLOW_CONSUMER: { wire: 302, description: 'the peer does not read what it is sent: its unread output passed the limit' },
  SESSION_IDLE: { wire: 303, description: 'the session asked for nothing within the session idle timeout' },
  INTERNAL_ERROR: { wire: 500, description: 'a bug or an unexpected failure on the sender side' },
} as const satisfies Record<string, { wire: number; description: string }>;

export type WireErrorName = keyof typeof WIRE_ERRORS;

/** Local (never on the wire) error codes with their meaning. */
export const LOCAL_ERRORS = {
  QHCP_ERR_CONFIG_INVALID: 'the configuration (file, flags or plugin options) does not validate',
  QHCP_ERR_CONFIG_LOAD: 'the configuration file could not be found, read or evaluated',
  QHCP_ERR_CLI_USAGE: 'a command-line flag or argument is unknown or invalid',
  QHCP_ERR_TLS_FILE: 'a certificate or key file is missing, unreadable or not PEM',
  QHCP_ERR_LISTEN: 'the address could not be bound (in use, not local, no permission)',
  QHCP_ERR_PLUGIN_INVALID: 'a plugin is not a valid plugin object or its dependencies are missing',
  QHCP_ERR_PLUGIN_HOOK: 'a plugin threw inside a hook',
  QHCP_ERR_PLUGIN_TIMEOUT: 'a plugin did not finish a hook in time',
  QHCP_ERR_CONNECT: 'a QUIC connection could not be established',
  QHCP_ERR_CLOSED: 'the session is closed',
  QHCP_ERR_CONTROL: "the agent's control socket could not be reached, refused access, or rejected the command",
} as const;

export type LocalErrorCode = keyof typeof LOCAL_ERRORS;

const BY_WIRE = new Map<number, WireErrorName>(
  (Object.keys(WIRE_ERRORS) as WireErrorName[]).map((n) => [WIRE_ERRORS[n].wire, n]),
);

/** The name for a numeric wire code, or undefined for a code this version does not know. */
export function wireErrorName(wire: number): WireErrorName | undefined {
  return BY_WIRE.get(wire);
}

/** Base of every qhcp error. `code` is stable: match on it, not on the message. */
export class QhcpError extends Error {
  override name = 'QhcpError';
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/**
 * A protocol error: what goes into an ERROR frame. `kind` names the wire code; `reason` is the
 * human text sent with it.
 */
export class ProtocolError extends QhcpError {
  override name = 'ProtocolError';
  readonly kind: WireErrorName;
  readonly wire: number;
  constructor(kind: WireErrorName, reason: string, options?: { cause?: unknown }) {
    super(`QHCP_ERR_${kind}`, reason, options);
    this.kind = kind;
    this.wire = WIRE_ERRORS[kind].wire;
  }
}

/** An ERROR the peer sent us, or the close code it closed with. */
export class PeerError extends QhcpError {
  override name = 'PeerError';
  readonly wire: number;
  readonly kind: WireErrorName | undefined;
  constructor(wire: number, reason: string) {
    const kind = wireErrorName(wire);
    super(kind ? `QHCP_ERR_${kind}` : 'QHCP_ERR_PEER_UNKNOWN', reason);
    this.wire = wire;
    this.kind = kind;
  }
  /** "AUTH_EXPIRED: token expired", the form status tables show. */
  override toString(): string {
    return `${this.kind ?? `ERROR_${this.wire}`}: ${this.message}`;
  }
}

/** A local error with one of the LOCAL_ERRORS codes. */
export class LocalError extends QhcpError {
  override name = 'LocalError';
  constructor(code: LocalErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** Config validation failure: every problem, by path, in `problems`. */
export class ConfigError extends LocalError {
  override name = 'ConfigError';
  readonly problems: string[];
  constructor(problems: string[]) {
    super('QHCP_ERR_CONFIG_INVALID', `invalid configuration:\n  ${problems.join('\n  ')}`);
    this.problems = problems;
  }
}

/** What a plugin threw or failed to finish, wrapped with the hook and plugin it came from. */
export class PluginError extends LocalError {
  override name = 'PluginError';
  readonly hook: string;
  readonly plugin: string;
  constructor(code: 'QHCP_ERR_PLUGIN_HOOK' | 'QHCP_ERR_PLUGIN_TIMEOUT', hook: string, plugin: string, cause?: unknown) {
    const why = code === 'QHCP_ERR_PLUGIN_TIMEOUT' ? 'timed out' : `threw: ${errorText(cause)}`;
    super(code, `plugin ${plugin} in hook ${hook} ${why}`, { cause });
    this.hook = hook;
    this.plugin = plugin;
  }
}

/** A short, single-line text for any thrown value. */
export function errorText(e: unknown): string {
  if (e instanceof Error) return e.message.split('\n')[0] ?? e.name;
  return String(e);
}
