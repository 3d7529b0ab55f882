/**
 * webhook: POSTs each alert as JSON (alertPayload) to a URL. Each attempt has a timeout; a
 * network error, a timeout, 408, 429 or 5xx is retried with exponential backoff up to `retries`
 * times; other 4xx are final. Deliveries go one at a time through a bounded queue that drops
 * the oldest alert (counted, with a warning) when the receiver cannot keep up. Damped per server
 * (damper.ts). The alert hook only enqueues: a slow receiver never delays the load balancer.
 */
import { safeJson } from '../../core/util/sanitize.ts';
import type { CoreLike } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import { errorText } from '../../core/errors.ts';
import { Damper, alertPayload, minIntervalSchema } from './damper.ts';
import { SerialQueue, queueOptionsSchema, tapDampedQueue } from './queue.ts';

const PLUGIN_NAME = 'webhook';


export interface WebhookStats {
  sent: number;
  failed: number;
  retries: number;
  dropped: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

const schema = {
type: 'object',
  additionalProperties: false,
  required: ['url'],
  properties: {
    url: { type: 'string', pattern: '^https?://', description: 'where to POST (http or https)' },
    headers: { type: 'object', additionalProperties: { type: 'string' }, default: {}, description: 'extra request headers (e.g. Authorization)' },
    timeoutMs: { type: 'integer', minimum: 10, maximum: 600_000, default: 5000, description: 'per attempt' },
    retries: { type: 'integer', minimum: 0, maximum: 20, default: 3, description: 'further attempts after a retryable failure' },
    backoffMs: { type: 'integer', minimum: 0, maximum: 600_000, default: 500, description: 'wait before the first retry; doubles each retry' },
    maxBackoffMs: { type: 'integer', minimum: 0, maximum: 3_600_000, default: 30_000, description: 'longest wait between retries' },
    minIntervalMs: minIntervalSchema(30_000),
    ...queueOptionsSchema('deliver'),
  },
} as const;

export type WebhookOptions = FromSchema<typeof schema>;

/** The plugin's body: a damper feeding a bounded delivery queue. */
export class WebhookAlert {
  readonly stats: WebhookStats = { sent: 0, failed: 0, retries: 0, dropped: 0 };
  private readonly queue: SerialQueue<string>;
  readonly damper: Damper;
  private logger: CoreLike['logger'] | undefined;

  constructor(private readonly opts: WebhookOptions) {
    // Refuse a bad URL at start-up, not at the first alert.
    const u = new URL(this.opts.url);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error(`webhook url must be http or https, got ${u.protocol}`);
    this.queue = new SerialQueue(this.opts.queueSize, (body) => this.deliver(body), (_, n) => {
      this.stats.dropped = n;
      this.logger?.limited(`${PLUGIN_NAME}:dropped`, `${PLUGIN_NAME}: queue full (${this.opts.queueSize}), dropped the oldest alert`, { url: this.where(), dropped: n });
    });
    this.damper = new Damper(this.opts.minIntervalMs, (e, suppressed) => this.queue.push(safeJson(alertPayload(e, suppressed))));
  }

  /** The URL without credentials or query, for logs. */
  private where(): string {
    const u = new URL(this.opts.url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  }

  /** Backoff before retry `n` (1-based): backoffMs * 2^(n-1), capped. */
  backoff(n: number): number {
    return Math.min(this.opts.maxBackoffMs, this.opts.backoffMs * 2 ** (n - 1));
  }

  /** One alert: attempts until delivered, a final answer, or retries run out. */
  private async deliver(body: string): Promise<void> {
    let last = '';
    for (let attempt = 0; attempt <= this.opts.retries; attempt++) {
      if (attempt > 0) {
        this.stats.retries++;
        await sleep(this.backoff(attempt));
      }
      try {
        const res = await fetch(this.opts.url, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'user-agent': 'qhcp-webhook', ...this.opts.headers },
          body,
          signal: AbortSignal.timeout(this.opts.timeoutMs),
          redirect: 'error',
        });
        await res.body?.cancel().catch(() => {});
        if (res.ok) {
          this.stats.sent++;
          return;
        }
        last = `HTTP ${res.status}`;
        if (!(res.status >= 500 || res.status === 408 || res.status === 429)) break;
      } catch (e) {
        last = (e as Error).name === 'TimeoutError' ? `timed out after ${this.opts.timeoutMs} ms` : errorText((e as Error).cause ?? e);
      }
    }
    this.stats.failed++;
    this.logger?.limited(`${PLUGIN_NAME}:failed`, `${PLUGIN_NAME}: alert not delivered`, { url: this.where(), error: last });
  }

  /** Alerts waiting or being delivered. */
  get pending(): number {
    return this.queue.size;
  }

  /** Waits until the queue is empty (tests, stop). */
  drain(timeoutMs: number): Promise<boolean> {
    return this.queue.drain(timeoutMs);
  }

  apply(core: CoreLike): void {
    this.logger = core.logger;
    tapDampedQueue(core, PLUGIN_NAME, { damper: this.damper, queue: this.queue }, this.opts.drainTimeoutMs, (left) => [`${PLUGIN_NAME}: stopping with alerts undelivered`, { url: this.where(), undelivered: left }]);
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'alert',
  roles: ['loadbalancer'],
  schema,
  setup: (options) => new WebhookAlert(options),
});
