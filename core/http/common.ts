/**
 * What the CLI needs of the HTTP listener without loading it (fastify, prom-client stay
 * unloaded while the listener is off): the address rules and the JSON error shape.
 */
import { isIP } from 'node:net';
import { parseAddress } from '../util/address.ts';
import type { QhcpConfig } from '../config/config.ts';
import type { BackendView, CheckResult, Hooks, Transition } from '../plugin/hooks.ts';

/** The HTTP port in the defaults list (docs/operations.md). */
export const DEFAULT_HTTP_PORT = 4280;
export const DEFAULT_HTTP_HOST = '127.0.0.1';

export interface HttpAddress {
  host: string;
  port: number;
}

/**
 * `http` as configured: "off" -> undefined; "host:port", "[v6]:port", a bare host (port 4280)
 * or ":port" (127.0.0.1).
 * @throws LocalError QHCP_ERR_CLI_USAGE naming the bad value
 */
export function parseHttp(value: string): HttpAddress | undefined {
  const v = value.trim();
  if (v === 'off' || v === 'false' || v === 'none') return undefined;
  let text = /^\d{1,5}$/.test(v) ? `${DEFAULT_HTTP_HOST}:${v}` : v.startsWith(':') ? `${DEFAULT_HTTP_HOST}${v}` : v;
  // Port 0 (any free port) is allowed here; parseAddress wants 1-65535.
  const any = /:0$/.test(text);
  if (any) text = `${text.slice(0, -2)}:1`;
  const a = parseAddress(text, DEFAULT_HTTP_PORT);
  return any ? { host: a.host, port: 0 } : a;
}

export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) === 6) return host === '::1' || host.toLowerCase().startsWith('::ffff:127.');
  return false;
}

/** Where a role's listener goes: `http` as configured, else the role's default (load balancer on, agent off). */
export function httpAddressOf(config: Pick<QhcpConfig, 'http'>, role: 'server' | 'loadbalancer'): { at: HttpAddress | undefined; explicit: boolean } {
  if (config.http !== undefined) return { at: parseHttp(config.http), explicit: true };
  return { at: role === 'loadbalancer' ? { host: DEFAULT_HTTP_HOST, port: DEFAULT_HTTP_PORT } : undefined, explicit: false };
}

/** A JSON error body: { error: CODE, message }. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export const ERROR_SCHEMA = {
  type: 'object',
  properties: { error: { type: 'string' }, message: { type: 'string' } },
  required: ['error', 'message'],
} as const;


/**
 * Keeps the `checked` and `transition` events from the load balancer's start until the HTTP
 * listener (loaded after start, so start-up is not held up by fastify) takes them over; at
 * most `max` events, the oldest dropped.
 */
export class EarlyEvents {
  readonly events: Array<{ checked: [BackendView, CheckResult] } | { transition: Transition }> = [];
  private on = true;
  constructor(hooks: Hooks, max = 10_000) {
    const keep = (e: EarlyEvents['events'][number]) => {
      if (!this.on) return;
      this.events.push(e);
      if (this.events.length > max) this.events.shift();
    };
    hooks.checked.tap('http-early', (b, res) => keep({ checked: [b, res] }));
    hooks.transition.tap('http-early', (t) => keep({ transition: t }));
  }

  /** Hands the kept events over, in order, and stops keeping. */
  drain(checked: (b: BackendView, res: CheckResult) => void, transition: (t: Transition) => void): void {
    this.on = false;
    for (const e of this.events.splice(0)) {
      if ('checked' in e) checked(...e.checked);
      else transition(e.transition);
    }
  }
}
