/**
 * The HTTP listener (docs/operations.md, "HTTP listener"): fastify with JSON-schema routes,
 * small limits (body, headers, connections, live-update clients), security headers, JSON
 * errors, and bearer-token auth for admin writes. This module and its dependencies (fastify,
 * prom-client) are imported only when a listener is on, so `qhcp --version` never loads them.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { LocalError, errorText } from '../errors.ts';
import { HttpError, isLoopback, type HttpAddress } from './common.ts';
export { readToken } from './token.ts';
import type { Logger } from '../util/log.ts';

const digest = (s: string) => createHash('sha256').update(s).digest();

export interface AppOptions {
  logger: Logger;
  /** Bearer token for writes; undefined = writes are refused (admin API off). */
  token: string | undefined;
  /** Most open connections (the live page holds one each). */
  maxConnections?: number;
}

export interface App {
  app: FastifyInstance;
  /** A preHandler that answers 401/403 unless the request carries the token. */
  requireToken: (req: FastifyRequest, reply: FastifyReply) => Promise<void>;
  readonly adminEnabled: boolean;
}

/** A fastify instance with qhcp's limits, headers and error shape; routes are added by the role. */
export function createApp(opts: AppOptions): App {
  const app = Fastify({
    logger: false,
    bodyLimit: 16 * 1024,
    // Bounded time for a client to send its request and to stay idle; the live page's
    // event stream sends a heartbeat well within connectionTimeout.
    requestTimeout: 10_000,
    connectionTimeout: 60_000,
    keepAliveTimeout: 5_000,
    maxRequestsPerSocket: 1000,
    return503OnClosing: true,
    // Live pages hold their event stream open: closing the listener ends them too.
    forceCloseConnections: true,
    routerOptions: { maxParamLength: 400 },
  });
  app.server.maxConnections = opts.maxConnections ?? 256;
  app.server.headersTimeout = 10_000;
  app.addHook('onSend', async (_req, reply, payload) => {
    reply.header('x-content-type-options', 'nosniff');
    reply.header('x-frame-options', 'DENY');
    reply.header('referrer-policy', 'no-referrer');
    reply.header('cache-control', 'no-store');
    return payload;
  });
  app.setErrorHandler((err: Error & { statusCode?: number; validation?: unknown; code?: string }, _req, reply) => {
    if (err instanceof HttpError) return reply.code(err.status).send({ error: err.code, message: err.message });
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500;
    if (status >= 500) opts.logger.limited('http-error', 'HTTP handler failed', { error: errorText(err) });
    const code = err.validation ? 'BAD_REQUEST' : status === 413 ? 'TOO_LARGE' : status === 415 ? 'UNSUPPORTED_MEDIA_TYPE' : status >= 500 ? 'INTERNAL_ERROR' : 'BAD_REQUEST';
    return reply.code(status).send({ error: code, message: status >= 500 ? 'internal error' : err.message });
  });
  // DNS rebinding: a web page the operator visits can point its own host name at 127.0.0.1 and
  // script requests to a loopback listener. While the listener is on loopback, only Host names
  // that are loopback themselves are served; a listener bound elsewhere relies on its token.
  let onLoopback: boolean | undefined; // where the listener is bound, read once (a syscall)
  app.addHook('onRequest', async (req) => {
    if (onLoopback === undefined) {
      const bound = app.server.address();
      if (!bound || typeof bound !== 'object') return; // inject(): no socket
      onLoopback = isLoopback(bound.address);
    }
    if (!onLoopback) return;
    // HTTP/1.0 may omit Host (1.1 may not: Node answers 400 first). Browsers always send one, so
    // a request without it is no rebinding page's: it is served (plain scripts, old monitors).
    if (req.headers.host === undefined && req.raw.httpVersion === '1.0') return;
    const host = hostOf(req.headers.host);
    if (host === undefined || !isLoopback(host)) {
      throw new HttpError(421, 'MISDIRECTED_REQUEST', `Host ${JSON.stringify(String(req.headers.host ?? '').slice(0, 100))} is not a loopback name; this listener is on loopback and serves only localhost, 127.0.0.0/8 and [::1]`);
    }
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send({ error: 'NOT_FOUND', message: `no route ${req.method} ${req.url.slice(0, 200)}` }));

  const expected = opts.token === undefined ? undefined : digest(opts.token);
  const requireToken = async (req: FastifyRequest): Promise<void> => {
    if (!expected) throw new HttpError(403, 'ADMIN_DISABLED', 'the admin API is off: start the load balancer with httpTokenFile (--http-token-file)');
    const h = req.headers.authorization;
    const m = typeof h === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(h) : null;
    if (!m) throw new HttpError(401, 'UNAUTHORIZED', 'missing bearer token (Authorization: Bearer <token>)');
    if (!timingSafeEqual(digest(m[1]!), expected)) throw new HttpError(401, 'UNAUTHORIZED', 'wrong bearer token');
  };
  return { app, requireToken, adminEnabled: expected !== undefined };
}

/**
 * Starts listening. With the default address (not configured), an address in use is a
 * warning and no listener (a second load balancer on one host still starts); a configured
 * address that cannot be bound is an error.
 * @throws LocalError QHCP_ERR_LISTEN
 */
export async function listen(app: FastifyInstance, at: HttpAddress, explicit: boolean, logger: Logger, what: string): Promise<HttpAddress | undefined> {
  try {
    await app.listen({ host: at.host, port: at.port });
  } catch (e) {
    const why = `${what} HTTP listener: cannot listen on ${at.host}:${at.port}: ${(e as NodeJS.ErrnoException).code ?? errorText(e)}`;
    if (!explicit) {
      logger.warn(`${why}; continuing without it (set http to another address, or "off")`);
      await app.close().catch(() => {});
      return undefined;
    }
    await app.close().catch(() => {});
    throw new LocalError('QHCP_ERR_LISTEN', why, { cause: e });
  }
  const addr = app.server.address();
  const port = addr && typeof addr === 'object' ? addr.port : at.port;
  return { host: at.host, port };
}

/** The host name of a Host header ("127.0.0.1:4280" -> "127.0.0.1", "[::1]:80" -> "::1"), or undefined. */
export function hostOf(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^\[([0-9a-fA-F:.]+)\](?::\d{1,5})?$/.exec(header) ?? /^([^:[\]]+)(?::\d{1,5})?$/.exec(header);
  return m ? m[1]!.toLowerCase() : undefined;
}

export function urlOf(a: HttpAddress): string {
  const host = a.host === '0.0.0.0' ? '127.0.0.1' : a.host === '::' ? '[::1]' : isIP(a.host) === 6 ? `[${a.host}]` : a.host;
  return `http://${host}:${a.port}/`;
}
