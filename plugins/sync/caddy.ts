/**
 * caddy (sync): keeps the upstreams of one Caddy `reverse_proxy` handler in step through Caddy's
 * admin API. The handler is found by its `@id` (`/id/<id>/upstreams`) or by a config path
 * (`/config/<path>`). Each run GETs the upstreams Caddy has now and, when they differ from the
 * ready backends' targets (ready and unknown backends, in configuration order), PATCHes the new
 * list; an empty list is valid (Caddy answers 503). Caddy 2.6 (Debian's) has no per-upstream
 * weights, so none are sent. Runs are coalesced, retried with backoff and logged with the
 * request; every run compares with what Caddy has, so a restarted Caddy is put back in step
 * within `resyncIntervalMs`.
 */
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import { ConfigError } from '../../core/errors.ts';
import { Reconciler, RETRY_SCHEMA, SyncCommandError, TARGET_SCHEMA, checkTargets, eligible, formatAddress, targetOf, type TargetOptions } from './common.ts';

const PLUGIN_NAME = 'caddy';

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    admin: { type: 'string', pattern: '^https?://', maxLength: 1000, default: 'http://127.0.0.1:2019', description: 'Caddy\'s admin endpoint (its `admin.listen`)' },
    id: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,200}$', description: 'the `@id` of the reverse_proxy handler (one of id or path)' },
    path: { type: 'string', pattern: '^[A-Za-z0-9_./-]{1,1000}$', description: 'or the handler\'s config path, e.g. apps/http/servers/srv0/routes/0/handle/0' },
    ...TARGET_SCHEMA,
    timeoutMs: { type: 'integer', minimum: 10, maximum: 60_000, default: 2000, description: 'time for one admin API request' },
    resyncIntervalMs: { type: 'integer', minimum: 100, maximum: 3_600_000, default: 5000, description: 'compare with Caddy this often even without changes' },
    ...RETRY_SCHEMA,
  },
} as const;

export type CaddySyncOptions = FromSchema<typeof schema>;

/** The plugin's body (definePlugin below). */
export class CaddySync {
  private view: readonly BackendView[] = [];
  private reconciler: Reconciler | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly url: string;
  /** PATCHes Caddy accepted so far. */
  updates = 0;

  constructor(readonly options: CaddySyncOptions) {
    const problems = checkTargets(options);
    if ((options.id === undefined) === (options.path === undefined)) problems.push('give one of id (the handler\'s @id) or path');
    if (problems.length) throw new ConfigError(problems.map((p) => `caddy: ${p}`));
    const base = options.admin.replace(/\/+$/, '');
    this.url = options.id !== undefined ? `${base}/id/${options.id}/upstreams` : `${base}/config/${options.path!.replace(/^\/+|\/+$/g, '')}/upstreams`;
  }

  apply(core: CoreLike): void {
    this.reconciler = new Reconciler(PLUGIN_NAME, core.logger, () => this.run(), this.options);
    core.hooks.sync.tap(PLUGIN_NAME, (u) => {
      this.view = u.view;
      this.reconciler!.poke();
    });
    core.hooks.ready.tap(PLUGIN_NAME, () => this.startResync());
    core.hooks.stop.tapPromise(PLUGIN_NAME, async () => {
      clearInterval(this.timer);
      await this.reconciler!.halt(Math.min(1000, this.options.timeoutMs));
    });
  }

  startResync(): void {
    clearInterval(this.timer);
    this.timer = setInterval(() => this.reconciler?.poke(), this.options.resyncIntervalMs);
    this.timer.unref();
  }

  settled(timeoutMs: number): Promise<boolean> {
    return this.reconciler ? this.reconciler.settled(timeoutMs) : Promise.resolve(true);
  }

  /** The upstreams Caddy should have. */
  upstreams(view: readonly BackendView[]): Array<{ dial: string }> {
    const out: Array<{ dial: string }> = [];
    for (const b of view) {
      if (!eligible(b)) continue;
      try {
        out.push({ dial: formatAddress(targetOf(b.address, this.options)) });
      } catch {
        /* no usable target: left out */
      }
    }
    return out;
  }

  private async request(method: 'GET' | 'PATCH', body?: unknown): Promise<unknown> {
    const what = `${method} ${this.url}${body !== undefined ? ` ${JSON.stringify(body).slice(0, 300)}` : ''}`;
    let res: Response;
    try {
      res = await fetch(this.url, {
        method,
        headers: body !== undefined ? { 'content-type': 'application/json' } : {},
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(this.options.timeoutMs),
      });
    } catch (e) {
      const cause = (e as { cause?: { message?: string } }).cause?.message;
      throw new SyncCommandError(what, cause ?? (e as Error).message);
    }
    const text = (await res.text()).slice(0, 64 * 1024);
    if (!res.ok) throw new SyncCommandError(what, `Caddy answered ${res.status}: ${text.trim().slice(0, 300)}`);
    if (method === 'GET') {
      try {
        return JSON.parse(text) as unknown;
      } catch {
        throw new SyncCommandError(what, `not JSON: ${text.slice(0, 100)}`);
      }
    }
    return undefined;
  }

  private async run(): Promise<void> {
    if (this.view.length === 0) return;
    const want = this.upstreams(this.view);
    const have = await this.request('GET');
    const dials = (x: unknown) => (Array.isArray(x) ? x.map((u) => String((u as { dial?: unknown })?.dial)) : []);
    if (JSON.stringify(dials(have)) === JSON.stringify(want.map((u) => u.dial))) return;
    await this.request('PATCH', want);
    this.updates++;
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'sync',
  roles: ['loadbalancer'],
  schema,
  setup: (options) => new CaddySync(options),
});
