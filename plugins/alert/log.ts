/**
 * log: one structured line per alert (transition, start, stop) on stderr. JSON when stderr is
 * not a terminal (or `json: true`), one readable line otherwise. Damped like every alert plugin
 * (damper.ts), but by default it logs every transition: the log is the record.
 */
import { sanitize, safeJson } from '../../core/util/sanitize.ts';
import type { AlertEvent, CoreLike } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import { Damper, alertPayload, minIntervalSchema } from './damper.ts';

const PLUGIN_NAME = 'log';

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    json: { type: 'boolean', description: 'JSON lines (default: when stderr is not a terminal)' },
    minIntervalMs: minIntervalSchema(0),
  },
} as const;

export type LogAlertOptions = FromSchema<typeof schema>;

/** The plugin's body: formats each alert and writes it (to stderr; `write` may be replaced, as tests do). */
export class LogAlert {
  private readonly json: boolean;
  readonly damper: Damper;
  /** Where lines go. */
  write: (line: string) => void = (l) => process.stderr.write(l + '\n');

  constructor(options: LogAlertOptions) {
    this.json = options.json ?? !process.stderr.isTTY;
    this.damper = new Damper(options.minIntervalMs, (e, n) => this.write(this.format(e, n)));
  }

  format(e: AlertEvent, suppressed = 0): string {
    if (this.json) return safeJson({ level: 'alert', ...alertPayload(e, suppressed) });
    const more = suppressed > 0 ? ` (${suppressed} more transition${suppressed > 1 ? 's' : ''} suppressed)` : '';
    if (e.kind === 'transition') {
      const t = e.transition;
      return `${new Date(t.at).toISOString()} ALERT ${sanitize(t.server)} ${t.from} -> ${t.to}: ${sanitize(t.reason)}${more}`;
    }
    if (e.kind === 'panic') {
      const what = e.engaged ? `panic mode engaged (${e.healthy} of ${e.known} healthy, under ${e.thresholdPercent}%): balancing across ${e.servers.length}` : `panic mode ended (${e.healthy} of ${e.known} healthy)`;
      return `${new Date(e.at).toISOString()} ALERT load balancer ${sanitize(e.node)} pool ${sanitize(e.pool)}: ${what}`;
    }
    return `${new Date(e.at).toISOString()} ALERT load balancer ${sanitize(e.node)} ${e.kind} (${e.servers.length} servers)`;
  }

  apply(core: CoreLike): void {
    core.hooks.alert.tap(PLUGIN_NAME, (e) => this.damper.submit(e));
    core.hooks.stop.tap(PLUGIN_NAME, () => this.damper.flush());
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'alert',
  roles: ['loadbalancer'],
  schema,
  setup: (options) => new LogAlert(options),
});
