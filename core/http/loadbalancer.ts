/**
 * The load balancer's HTTP listener (docs/operations.md, "HTTP listener"): the status page
 * (GET /, live over server-sent events at GET /events), Prometheus metrics (GET /metrics),
 * and the JSON API (GET /api/status, /api/backends; admin writes with the bearer token).
 * Create it before the load balancer starts (it taps the hooks), listen after.
 */
import { readFileSync } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import { LbMetrics, type ObservedBackend, type ObservedLb } from './metrics.ts';
import { Observer, type Subscriber } from './observer.ts';
import { createApp, listen, urlOf } from './server.ts';
import { readToken } from './token.ts';
import { isLoopback, type EarlyEvents, type HttpAddress } from './common.ts';
import { Admin, registerAdmin, type AdminTarget } from './admin.ts';
import type { Logger } from '../util/log.ts';
import type { QhcpConfig } from '../config/config.ts';
import type { Hooks } from '../plugin/hooks.ts';

const PAGE = ['index.html', 'app.js', 'style.css'] as const;
const TYPES: Record<(typeof PAGE)[number], string> = { 'index.html': 'text/html; charset=utf-8', 'app.js': 'text/javascript; charset=utf-8', 'style.css': 'text/css; charset=utf-8' };
/** The page's own script and style only; no inline code, nothing from elsewhere. */
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
/** A page that stops reading is cut off once this much is queued for it. */
const MAX_QUEUED_BYTES = 1 << 20;

/** The parts of LoadBalancer the listener reads (kept structural so a split role still fits). */
export interface LbLike {
  readonly node: string;
  readonly hooks: Hooks;
  readonly logger: Logger;
  readonly config: Readonly<QhcpConfig>;
  readonly pluginFailures: ReadonlyMap<string, number>;
  readonly plugins: ReadonlyArray<{ name: string; family?: string }>;
  readonly stats: { picks: number; queries: number; checks: number; lateChecks: number; postponedSteps: number };
  readonly pickCounts: ReadonlyMap<string, number>;
  readonly backends: readonly ObservedBackend[] | (() => readonly ObservedBackend[]);
}

/** The backends of `lb` now, whether `backends` is a list or an accessor. */
export function backendsOf(lb: LbLike): readonly ObservedBackend[] {
  return typeof lb.backends === 'function' ? lb.backends() : lb.backends;
}

export function observed(lb: LbLike): ObservedLb {
  const q = lb as unknown as { queryConnections?: () => { open: number; accepted: number; limited?: number; watching?: number; resyncs?: number }; clusterInfo?: ObservedLb['clusterInfo']; transportStats?: ObservedLb['transportStats'] };
  return {
    node: lb.node,
    hooks: lb.hooks,
    pluginFailures: lb.pluginFailures,
    plugins: lb.plugins,
    stats: lb.stats,
    pickCounts: lb.pickCounts,
    currentBackends: () => backendsOf(lb),
    ...(typeof q.queryConnections === 'function' ? { queryConnections: () => q.queryConnections!() } : {}),
    ...(typeof q.clusterInfo === 'function' ? { clusterInfo: () => q.clusterInfo!() } : {}),
    ...(typeof q.transportStats === 'function' ? { transportStats: () => q.transportStats!() } : {}),
  };
}

export interface LbHttpOptions {
  /** Where to listen; undefined = off. */
  at: HttpAddress | undefined;
  /** The address was configured (a bind failure is fatal), not the default (a warning). */
  explicit: boolean;
  tokenFile?: string | undefined;
  /** Runtime changes and the state file (made before start: it applies the state file); default: one without a file. */
  admin?: Admin;
  /** Coalescing of live updates (ms). */
  flushMs?: number;
  /** Events since the load balancer started, kept until now (created before start). */
  early?: EarlyEvents;
}

export class LbHttp {
  readonly app: FastifyInstance;
  readonly metrics: LbMetrics;
  readonly observer: Observer;
  readonly adminEnabled: boolean;
  address: HttpAddress | undefined;

  constructor(
    readonly lb: LbLike,
    private readonly opts: LbHttpOptions,
  ) {
    const token = opts.tokenFile ? readToken(opts.tokenFile) : undefined;
    const { app, requireToken, adminEnabled } = createApp({ logger: lb.logger, token });
    this.app = app;
    this.adminEnabled = adminEnabled;
    const o = observed(lb);
    this.metrics = new LbMetrics(o);
    const c = lb.config;
    this.observer = new Observer(o, { node: lb.node, checkInterval: c.checkInterval, rise: c.riseAttempts, fall: c.maxFailAttempts, admin: adminEnabled }, opts.flushMs);
    opts.early?.drain(
      (b, res) => {
        this.metrics.onChecked(b, res);
        this.observer.onChecked(b, res);
      },
      (t) => {
        this.metrics.onTransition(t);
        this.observer.onTransition(t);
      },
    );
    this.routes();
    registerAdmin(app, {
      requireToken,
      list: () => this.observer.backends(),
      changed: (address, redraw) => {
        if (redraw) this.observer.broadcastSnapshot();
        else this.observer.touch(address);
      },
      logger: lb.logger,
      admin: opts.admin ?? new Admin(lb as unknown as AdminTarget, lb.logger),
    });
  }

  private routes(): void {
    const app = this.app;
    const files = new Map(PAGE.map((f) => [f, readFileSync(new URL(`./page/${f}`, import.meta.url), 'utf8')]));
    for (const f of PAGE) {
      app.get(f === 'index.html' ? '/' : `/${f}`, async (_req, reply) => {
        reply.header('content-security-policy', CSP).type(TYPES[f]);
        return files.get(f);
      });
    }
    app.get('/favicon.ico', async (_req, reply) => reply.code(204).send());
    app.get('/metrics', async (_req, reply) => {
      reply.type(this.metrics.contentType);
      return this.metrics.metrics();
    });
    app.get('/healthz', { schema: { response: { 200: { type: 'object', properties: { ok: { type: 'boolean' }, node: { type: 'string' } } } } } }, async () => ({ ok: true, node: this.lb.node }));
    app.get('/api/status', async () => this.observer.snapshot());
    app.get('/events', (req, reply) => {
      const res = reply.raw;
      const sub: Subscriber = {
        send: (event, data) => {
          if (res.destroyed || res.writableEnded) return false;
          if (res.writableLength > MAX_QUEUED_BYTES) {
            res.destroy();
            return false;
          }
          res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
          return true;
        },
      };
      if (!this.observer.subscribe(sub)) {
        return reply.code(503).send({ error: 'TOO_MANY_CLIENTS', message: `at most ${this.observer.maxSubscribers} live pages at once` });
      }
      reply.hijack();
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', connection: 'keep-alive' });
      // Reconnect after 1 s if the stream breaks (EventSource's retry).
      res.write('retry: 1000\n\n');
      sub.send('snapshot', this.observer.snapshot());
      const heartbeat = setInterval(() => {
        if (!res.destroyed) res.write(': keep-alive\n\n');
      }, 15_000);
      heartbeat.unref();
      req.raw.on('close', () => {
        clearInterval(heartbeat);
        this.observer.unsubscribe(sub);
      });
    });
  }

  /** Listens (warns instead when the default address is taken); logs the page's URL. */
  async listen(): Promise<HttpAddress | undefined> {
    const at = this.opts.at;
    if (!at) return undefined;
    this.lb.hooks.stop.tap('http', () => this.close());
    this.address = await listen(this.app, at, this.opts.explicit, this.lb.logger, 'load balancer');
    if (!this.address) return undefined;
    const url = urlOf(this.address);
    this.lb.logger.info('HTTP listener started', { url, metrics: `${url}metrics`, admin: this.adminEnabled ? 'on (bearer token)' : 'off (no httpTokenFile)' });
    if (!isLoopback(this.address.host) && !this.adminEnabled) {
      this.lb.logger.warn('HTTP listener is not on loopback and has no httpTokenFile: anyone who can reach it sees every backend and its metrics', { address: `${this.address.host}:${this.address.port}` });
    }
    return this.address;
  }

  get url(): string | undefined {
    return this.address ? urlOf(this.address) : undefined;
  }

  async close(): Promise<void> {
    this.observer.close();
    await this.app.close();
  }
}
