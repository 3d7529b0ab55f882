/**
 * haproxy-agent (sync): the load balancer answers HAProxy's agent-check protocol on a TCP port,
 * for users who prefer HAProxy to pull. HAProxy connects, sends its `agent-send` string (the
 * name of a backend: its qhcp address, or an alias from `names`), and reads one line in the
 * agent grammar, built from the latest `sync` view:
 *   ready -> `up ready N%` (N%: the weight percent, unless weightFrom is none)
 *   drain -> `up drain`, maint -> `maint`, down -> `down #<reason>` (HAProxy 2.6 ignores `down#reason` without the space: the description is a separate word starting with #)
 *   unknown (UNKNOWN: no verdict yet) -> `ready`: no opinion on health, no weight.
 * A request that is empty, too long, not printable, or names no backend gets
 * `down #unknown backend` and the connection is closed.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import { sanitize } from '../../core/util/sanitize.ts';
import { WEIGHT_SCHEMA, intentOf, weightPercent, type WeightOptions } from './common.ts';

const PLUGIN_NAME = 'haproxy-agent';
/** The longest request line read (a backend name); longer is malformed. */
const MAX_REQUEST = 256;

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    host: { type: 'string', minLength: 1, maxLength: 253, default: '127.0.0.1', description: 'address to listen on for HAProxy\'s agent checks' },
    port: { type: 'integer', minimum: 0, maximum: 65535, default: 4249, description: 'TCP port to listen on (0: any free port, logged)' },
    names: {
      type: 'object',
      additionalProperties: { type: 'string', minLength: 1, maxLength: 300, description: 'a qhcp backend address' },
      default: {},
      description: 'aliases: agent-send name -> qhcp backend address (a backend\'s own address always works)',
    },
    ...WEIGHT_SCHEMA,
    requestTimeoutMs: { type: 'integer', minimum: 10, maximum: 60_000, default: 2000, description: 'a connection that sends nothing this long gets `down #unknown backend`' },
    requestGapMs: { type: 'integer', minimum: 1, maximum: 10_000, default: 50, description: 'a request without a newline is complete after this much silence' },
    maxConnections: { type: 'integer', minimum: 1, maximum: 100_000, default: 256, description: 'agent-check connections open at once at most' },
  },
} as const;

export type HaproxyAgentOptions = FromSchema<typeof schema>;

/** The plugin's body (definePlugin below). */
export class HaproxyAgent {
  private view = new Map<string, BackendView>();
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  /** Requests answered so far, and those refused as malformed or unknown. */
  answered = 0;
  refused = 0;

  constructor(readonly options: HaproxyAgentOptions) {}

  get port(): number {
    const a = this.server?.address();
    return a && typeof a === 'object' ? a.port : 0;
  }

  apply(core: CoreLike): void {
    core.hooks.sync.tap(PLUGIN_NAME, (u) => {
      this.view = new Map(u.view.map((b) => [b.address, b]));
    });
    core.hooks.start.tapPromise(PLUGIN_NAME, () => this.listen(core));
    core.hooks.stop.tapPromise(PLUGIN_NAME, () => this.close());
  }

  /** Listens (the `start` hook does this; tests may call it directly). */
  async listen(core: CoreLike): Promise<void> {
    const server = createServer({ allowHalfOpen: true }, (s) => this.accept(s));
    server.maxConnections = this.options.maxConnections;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.options.port, this.options.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (e) => core.logger.limited('haproxy-agent-error', 'haproxy-agent: listener error', { plugin: PLUGIN_NAME, error: e.message }));
    this.server = server;
    core.logger.info('haproxy-agent listening', { plugin: PLUGIN_NAME, address: `${this.options.host}:${this.port}` });
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    this.server = undefined;
  }

  private accept(s: Socket): void {
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => {});
    let buf = '';
    let done = false;
    let gap: NodeJS.Timeout | undefined;
    const answer = () => {
      if (done) return;
      done = true;
      clearTimeout(gap);
      clearTimeout(overall);
      s.removeAllListeners('data');
      s.end(this.reply(buf));
    };
    const overall = setTimeout(answer, this.options.requestTimeoutMs);
    s.setEncoding('latin1');
    s.on('data', (d: string) => {
      buf += d;
      if (buf.includes('\n') || buf.length > MAX_REQUEST) return answer();
      clearTimeout(gap);
      gap = setTimeout(answer, this.options.requestGapMs);
    });
    s.on('end', answer);
  }

  /** The agent-check reply line for a request. */
  reply(request: string): string {
    const line = request.split('\n')[0]!.replace(/\r$/, '').trim();
    const unknown = () => {
      this.refused++;
      return 'down #unknown backend\n';
    };
    if (!line || line.length > MAX_REQUEST || !/^[\x21-\x7e]+$/.test(line)) return unknown();
    const address = this.options.names[line] ?? line;
    const b = this.view.get(address);
    if (!b) return unknown();
    this.answered++;
    const intent = intentOf(b);
    switch (intent) {
      case 'ready': {
        const pct = weightPercent(b, this.options);
        return `up ready${pct !== undefined ? ` ${pct}%` : ''}\n`;
      }
      case 'drain':
        return 'up drain\n';
      case 'maint':
        return 'maint\n';
      case 'down': {
        const why = (b as unknown as { reason?: string }).reason;
        const text = sanitize(typeof why === 'string' && why ? why : `qhcp: ${b.state}`, 200).replace(/[\\#]/g, ' ');
        return `down #${text}\n`;
      }
      default:
        return 'ready\n';
    }
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'sync',
  roles: ['loadbalancer'],
  schema,
  setup: (options) => new HaproxyAgent(options),
});
