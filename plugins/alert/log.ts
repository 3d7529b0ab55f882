/**
 * log: one structured line per alert event (transition, start, stop) on stderr: JSON when
 * stderr is not a terminal (or `json: true`), a readable line otherwise.
 */
import type { AlertEvent, CoreLike } from '../../core/hooks.ts';
import type { QhcpPlugin } from '../../core/plugins.ts';

const PLUGIN_NAME = 'log';

export default class LogAlertPlugin implements QhcpPlugin {
  static schema = {
    type: 'object',
    additionalProperties: false,
    properties: { json: { type: 'boolean' } },
  };
  readonly name = PLUGIN_NAME;
  readonly family = 'alert' as const;
  readonly roles = ['loadbalancer' as const];
  private readonly json: boolean;
  constructor(
    options: { json?: boolean } = {},
    private readonly write: (line: string) => void = (l) => process.stderr.write(l + '\n'),
  ) {
    this.json = options.json ?? !process.stderr.isTTY;
  }

  format(e: AlertEvent): string {
    if (this.json) return JSON.stringify({ time: new Date(e.kind === 'transition' ? e.transition.at : e.at).toISOString(), event: e.kind, node: e.node, ...(e.kind === 'transition' ? e.transition : { servers: e.servers.length }) });
    if (e.kind === 'transition') {
      const t = e.transition;
      return `${new Date(t.at).toISOString()} ALERT ${t.server} ${t.from} -> ${t.to}: ${t.reason}`;
    }
    return `${new Date(e.at).toISOString()} ALERT load balancer ${e.node} ${e.kind} (${e.servers.length} servers)`;
  }

  apply(core: CoreLike): void {
    core.hooks.alert.tap(PLUGIN_NAME, (e) => this.write(this.format(e)));
  }
}
