/**
 * Addresses as users write them: "host:port", "[v6]:port", or a bare host that takes the
 * role's default port (docs/protocol.md, "Transport").
 */
import { isIP } from 'node:net';
import { LocalError } from '../errors.ts';

export interface Address {
  host: string;
  port: number;
}

const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** @throws LocalError QHCP_ERR_CLI_USAGE naming the bad address */
export function parseAddress(text: string, defaultPort: number): Address {
  const t = text.trim();
  let host: string;
  let portText: string | undefined;
  const v6 = /^\[([^\]]+)\](?::(.*))?$/.exec(t);
  if (v6) {
    host = v6[1]!;
    portText = v6[2];
    if (isIP(host) !== 6) throw bad(text, 'not an IPv6 address in brackets');
  } else if (t.indexOf(':') !== t.lastIndexOf(':') && isIP(t) === 6) {
    // (A bare IPv6 address has two colons at least; host:port skips the costly IPv6 test.)
    host = t;
  } else {
    const i = t.lastIndexOf(':');
    host = i >= 0 ? t.slice(0, i) : t;
    portText = i >= 0 ? t.slice(i + 1) : undefined;
    if (!host) throw bad(text, 'missing host');
    if (!isIP(host) && !HOSTNAME.test(host)) throw bad(text, 'not a valid host name or IP address');
  }
  let port = defaultPort;
  if (portText !== undefined) {
    if (!/^\d{1,5}$/.test(portText)) throw bad(text, 'port is not a number');
    port = Number(portText);
    if (port < 1 || port > 65535) throw bad(text, 'port must be 1-65535');
  }
  return { host, port };
}

export function formatAddress(a: Address): string {
  return `${isIP(a.host) === 6 ? `[${a.host}]` : a.host}:${a.port}`;
}

function bad(text: string, why: string): LocalError {
  return new LocalError('QHCP_ERR_CLI_USAGE', `bad address "${text}": ${why}`);
}
