/**
 * haproxy (sync): keeps HAProxy's servers in step with the load balancer's view through the
 * runtime API on its stats socket (`level admin`). Each run reads `show servers state`, finds
 * the HAProxy server(s) of each backend (by the `servers` name map, else by the backend's
 * target host:port), and sends only what differs:
 *   `set server B/S state ready|drain|maint`, `set server B/S health up|down` (DOWN), and
 *   `set server B/S weight N` (N = the server's initial weight x the backend's weight percent).
 * Runs happen off the check path (Reconciler): coalesced, retried with backoff, each failed
 * command logged. Every run compares with what HAProxy reports now, so a restarted HAProxy (or
 * a socket that went away and came back) is brought back in step at the next run: on every
 * change, after a failure's retry, and every `resyncIntervalMs`.
 */
import type { BackendView, CoreLike, SyncUpdate } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import { ConfigError } from '../../core/errors.ts';
import {
  Reconciler,
  RETRY_SCHEMA,
  SyncCommandError,
  TARGET_SCHEMA,
  WEIGHT_SCHEMA,
  checkTargets,
  intentOf,
  targetOf,
  weightPercent,
  type TargetOptions,
  type WeightOptions,
} from './common.ts';
import { ADMIN_FDRAIN, ADMIN_FMAINT, haproxyCommand, parseServersState, parseSocket, type HaproxyServer, type SocketSpec } from './haproxy-cli.ts';

const PLUGIN_NAME = 'haproxy';

const SERVER_REF = '^[A-Za-z0-9_.:-]{1,100}/[A-Za-z0-9_.:-]{1,100}$';

const schema = {
  type: 'object',
  additionalProperties: false,
  required: ['socket'],
  properties: {
    socket: { type: 'string', minLength: 1, maxLength: 1000, description: 'HAProxy\'s stats socket (level admin): a Unix socket path (/... or ./...) or TCP host:port' },
    backends: {
      type: 'array',
      items: { type: 'string', pattern: '^[A-Za-z0-9_.:-]{1,100}$', description: 'an HAProxy backend name' },
      default: [],
      description: 'HAProxy backends whose servers are matched by address (empty: all)',
    },
    servers: {
      type: 'object',
      additionalProperties: {
        anyOf: [
          { type: 'string', pattern: SERVER_REF },
          { type: 'array', items: { type: 'string', pattern: SERVER_REF }, maxItems: 100 },
        ],
        description: '"backend/server" or a list of them',
      },
      default: {},
      description: 'name map: qhcp backend address -> "haproxyBackend/server" (or a list); others are matched by target address',
    },
    ...TARGET_SCHEMA,
    ...WEIGHT_SCHEMA,
    health: { type: 'boolean', default: true, description: 'DOWN backends get `health down` (and `health up` when they recover); false: DOWN is put in maint instead' },
    timeoutMs: { type: 'integer', minimum: 10, maximum: 60_000, default: 2000, description: 'time for one command (connect, send, answer)' },
    resyncIntervalMs: { type: 'integer', minimum: 100, maximum: 3_600_000, default: 5000, description: 'compare with HAProxy this often even without changes (brings a restarted HAProxy back in step)' },
    ...RETRY_SCHEMA,
  },
} as const;

export type HaproxySyncOptions = FromSchema<typeof schema>;

/** The plugin's body (definePlugin below). */
export class HaproxySync {
  private readonly socket: SocketSpec;
  private view: readonly BackendView[] = [];
  private reconciler: Reconciler | undefined;
  private timer: NodeJS.Timeout | undefined;
  private core: CoreLike | undefined;
  private readonly unmatched = new Set<string>();
  /** Commands sent that HAProxy accepted, in order (for tests and status). */
  readonly sent: string[] = [];

  constructor(readonly options: HaproxySyncOptions) {
    const problems = checkTargets(options);
    let socket: SocketSpec | undefined;
    try {
      socket = parseSocket(options.socket);
    } catch (e) {
      problems.push(`socket: ${(e as Error).message}`);
    }
    if (problems.length) throw new ConfigError(problems.map((p) => `haproxy: ${p}`));
    this.socket = socket!;
  }

  apply(core: CoreLike): void {
    this.core = core;
    this.reconciler = new Reconciler(PLUGIN_NAME, core.logger, () => this.run(), this.options);
    core.hooks.sync.tap(PLUGIN_NAME, (u: SyncUpdate) => {
      this.view = u.view;
      this.reconciler!.poke();
    });
    core.hooks.ready.tap(PLUGIN_NAME, () => {
      this.timer = setInterval(() => this.reconciler!.poke(), this.options.resyncIntervalMs);
      this.timer.unref();
    });
    core.hooks.stop.tapPromise(PLUGIN_NAME, async () => {
      clearInterval(this.timer);
      await this.reconciler!.halt(Math.min(1000, this.options.timeoutMs));
    });
  }

  /** Waits until the plugin has nothing left to do (tests); false after `timeoutMs`. */
  settled(timeoutMs: number): Promise<boolean> {
    return this.reconciler ? this.reconciler.settled(timeoutMs) : Promise.resolve(true);
  }

  /** Starts the periodic resync without a `ready` hook (tests that drive `sync` directly). */
  startResync(): void {
    clearInterval(this.timer);
    this.timer = setInterval(() => this.reconciler?.poke(), this.options.resyncIntervalMs);
    this.timer.unref();
  }

  private command(cmd: string): Promise<string> {
    return haproxyCommand(this.socket, cmd, this.options.timeoutMs);
  }

  /** One pass: read HAProxy's servers, send what differs. @throws SyncCommandError on the first failures */
  private async run(): Promise<void> {
    if (this.view.length === 0) return;
    const cmd = 'show servers state';
    const answer = await this.command(cmd);
    let servers: HaproxyServer[];
    try {
      servers = parseServersState(answer);
    } catch (e) {
      throw new SyncCommandError(cmd, (e as Error).message);
    }
    const wanted = this.options.backends;
    const byRef = new Map(servers.map((s) => [`${s.backend}/${s.name}`, s]));
    const failures: SyncCommandError[] = [];
    for (const b of this.view) {
      const intent = intentOf(b);
      if (intent === 'unknown') continue;
      const matched = this.match(b, servers, byRef, wanted);
      if (matched.length === 0) {
        if (!this.unmatched.has(b.address)) {
          this.unmatched.add(b.address);
          this.core?.logger.warn('haproxy: no HAProxy server for this backend (add it to servers or targets)', { plugin: PLUGIN_NAME, backend: b.address });
        }
        continue;
      }
      this.unmatched.delete(b.address);
      const pct = weightPercent(b, this.options);
      for (const s of matched) {
        for (const c of this.commandsFor(s, intent, pct)) {
          try {
            const out = (await this.command(c)).trim();
            if (out) throw new SyncCommandError(c, `HAProxy: ${out}`);
            this.sent.push(c);
            if (this.sent.length > 1000) this.sent.splice(0, 500);
          } catch (e) {
            failures.push(e instanceof SyncCommandError ? e : new SyncCommandError(c, String(e)));
          }
        }
      }
    }
    if (failures.length > 1) {
      // Each one is logged; the Reconciler logs the last one with its retry.
      for (const f of failures.slice(0, -1)) this.core?.logger.warn(`${PLUGIN_NAME}: command failed`, { plugin: PLUGIN_NAME, command: f.command, error: f.message });
    }
    if (failures.length) throw failures[failures.length - 1];
  }

  private match(b: BackendView, servers: HaproxyServer[], byRef: Map<string, HaproxyServer>, wanted: string[]): HaproxyServer[] {
    const named = this.options.servers[b.address];
    if (named !== undefined) {
      const refs = Array.isArray(named) ? named : [named];
      // A name HAProxy does not list still gets its command: HAProxy's error says why (logged, retried).
      return refs.map((r) => byRef.get(r) ?? ({ backend: r.split('/')[0]!, name: r.split('/')[1]!, addr: '', port: 0, opState: -1, adminState: -1, uweight: -1, iweight: -1 } as HaproxyServer));
    }
    let t: { host: string; port: number };
    try {
      t = targetOf(b.address, this.options);
    } catch {
      return [];
    }
    return servers.filter((s) => (wanted.length === 0 || wanted.includes(s.backend)) && s.port === t.port && sameHost(s.addr, t.host));
  }

  /** The commands that bring HAProxy server `s` to `intent` and weight percent `pct`. */
  private commandsFor(s: HaproxyServer, intent: Exclude<ReturnType<typeof intentOf>, 'unknown'>, pct: number | undefined): string[] {
    const ref = `${s.backend}/${s.name}`;
    const known = s.adminState >= 0;
    const out: string[] = [];
    const admin = !known ? undefined : s.adminState & ADMIN_FMAINT ? 'maint' : s.adminState & ADMIN_FDRAIN ? 'drain' : 'ready';
    const down = this.options.health && intent === 'down';
    const wantAdmin = intent === 'down' ? (this.options.health ? 'ready' : 'maint') : intent;
    if (admin !== wantAdmin) out.push(`set server ${ref} state ${wantAdmin}`);
    if (this.options.health && intent !== 'maint') {
      if (down && (!known || s.opState !== 0)) out.push(`set server ${ref} health down`);
      else if (!down && (!known || s.opState === 0)) out.push(`set server ${ref} health up`);
    }
    if (pct !== undefined && intent === 'ready') {
      const base = known ? s.iweight : 100;
      if (base > 0) {
        const w = Math.max(1, Math.min(256, Math.round((base * pct) / 100)));
        if (!known || s.uweight !== w) out.push(`set server ${ref} weight ${w}`);
      }
    }
    return out;
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'sync',
  roles: ['loadbalancer'],
  schema,
  setup: (options) => new HaproxySync(options),
});

function sameHost(a: string, b: string): boolean {
  const strip = (h: string) => h.replace(/^\[|\]$/g, '').toLowerCase();
  const x = strip(a);
  const y = strip(b);
  if (x === y) return true;
  const local = (h: string) => h === 'localhost' || h === '127.0.0.1' || h === '::1';
  return local(x) && local(y) && (x === 'localhost' || y === 'localhost');
}
