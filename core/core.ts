/**
 * The core object both roles build on: hooks, logger, frozen config, applied plugins.
 * Plugins receive it in `apply(core)`.
 */
import { hostname } from 'node:os';
import { createHooks, guardHooks, type CoreLike, type SessionInfo } from './hooks.ts';
import { applyPlugins, resolvePlugins, type QhcpPlugin, type RoleName } from './plugins.ts';
import { createLogger, type Logger } from './log.ts';
import type { QhcpConfig } from './config.ts';
import type { Session } from './session.ts';
import type { PluginError } from './errors.ts';

export class Core implements CoreLike {
  readonly hooks = createHooks();
  /** Failures per plugin name (thrown or timed out taps). */
  readonly pluginFailures = new Map<string, number>();
  /** The most recent contained plugin failure (a pick or check reports it as its reason). */
  lastPluginError: PluginError | undefined;
  plugins: QhcpPlugin[] = [];
  readonly node: string;

  constructor(
    readonly role: RoleName,
    readonly config: Readonly<QhcpConfig>,
    readonly logger: Logger = createLogger(),
    readonly configFile?: string,
  ) {
    this.node = config.node ?? `${hostname()}:${role === 'server' ? config.serverPort : config.loadbalancerPort}`;
    guardHooks(this.hooks, this.logger, config.pluginTimeout * 1000, this.pluginFailures, (err) => (this.lastPluginError = err));
  }

  /**
   * Resolves the config's plugins (plus role defaults) and applies them, unless `plugins`
   * are given directly (tests, embedding).
   */
  async loadPlugins(plugins?: QhcpPlugin[]): Promise<void> {
    this.plugins = plugins ?? (await resolvePlugins(this.config, this.role, this.configFile));
    await applyPlugins(this.plugins, this, this.config.pluginTimeout * 1000);
    this.logger.debug('plugins applied', { plugins: this.plugins.map((p) => p.name).join(',') });
  }

  sessionInfo(s: Session): SessionInfo {
    return { id: s.id, remote: s.remote, role: s.dfa.role };
  }

  /** A `frame` observer for sessions, or undefined when no plugin listens (hot path). */
  frameObserver(): ((dir: 'in' | 'out', msg: import('./messages.ts').Message, s: Session) => void) | undefined {
    // Not isUsed(): the guard's interceptor makes every hook "used".
    if (this.hooks.frame.taps.length === 0) return undefined;
    return (dir, msg, s) => this.hooks.frame.call(dir, msg, this.sessionInfo(s));
  }
}
