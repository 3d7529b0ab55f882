/**
 * envoy-eds (sync): writes the endpoints of one Envoy cluster as a `DiscoveryResponse` holding
 * one `envoy.config.endpoint.v3.ClusterLoadAssignment`, the file Envoy's path-based EDS reads
 * (`eds_config: { path_config_source: { path } }`). Envoy watches the file for a move into
 * place, so it is always written whole to a temporary file and renamed. Each backend is one
 * `lb_endpoint` at its target with a `health_status` (ready HEALTHY, or DEGRADED for a DEGRADED
 * state or verdict; drain and maint DRAINING; down UNHEALTHY; unknown UNKNOWN) and a
 * `load_balancing_weight` (the weight percent, >= 1). The file is rewritten only when its content
 * changed (then with a new `version_info`).
 */
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import { ConfigError } from '../../core/errors.ts';
import { Reconciler, RETRY_SCHEMA, SyncCommandError, TARGET_SCHEMA, WEIGHT_SCHEMA, checkTargets, intentOf, targetOf, weightPercent, writeAtomic, type TargetOptions, type WeightOptions } from './common.ts';

const PLUGIN_NAME = 'envoy-eds';
export const CLA_TYPE = 'type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment';

export type EnvoyHealth = 'UNKNOWN' | 'HEALTHY' | 'UNHEALTHY' | 'DRAINING' | 'DEGRADED';

/** Envoy's health_status for one backend. */
export function envoyHealth(b: BackendView): EnvoyHealth {
  switch (intentOf(b)) {
    case 'ready':
      return String(b.state) === 'DEGRADED' || (b as unknown as { verdict?: string }).verdict === 'DEGRADED' ? 'DEGRADED' : 'HEALTHY';
    case 'drain':
    case 'maint':
      return 'DRAINING';
    case 'down':
      return 'UNHEALTHY';
    default:
      return 'UNKNOWN';
  }
}

const schema = {
  type: 'object',
  additionalProperties: false,
  required: ['file', 'cluster'],
  properties: {
    file: { type: 'string', minLength: 1, maxLength: 4096, description: 'the EDS file Envoy reads (path_config_source.path); written by rename' },
    cluster: { type: 'string', minLength: 1, maxLength: 200, description: 'the Envoy cluster\'s name (cluster_name; the cluster has type EDS)' },
    ...TARGET_SCHEMA,
    ...WEIGHT_SCHEMA,
    ...RETRY_SCHEMA,
  },
} as const;

export type EnvoyEdsOptions = FromSchema<typeof schema>;

/** The plugin's body (definePlugin below). */
export class EnvoyEds {
  private view: readonly BackendView[] = [];
  private reconciler: Reconciler | undefined;
  private written: string | undefined;
  /** Files written so far (the version_info counter). */
  writes = 0;

  constructor(readonly options: EnvoyEdsOptions) {
    const problems = checkTargets(options);
    if (problems.length) throw new ConfigError(problems.map((p) => `envoy-eds: ${p}`));
  }

  apply(core: CoreLike): void {
    this.reconciler = new Reconciler(PLUGIN_NAME, core.logger, () => this.run(), this.options);
    core.hooks.sync.tap(PLUGIN_NAME, (u) => {
      this.view = u.view;
      this.reconciler!.poke();
    });
    core.hooks.stop.tapPromise(PLUGIN_NAME, () => this.reconciler!.halt(1000));
  }

  settled(timeoutMs: number): Promise<boolean> {
    return this.reconciler ? this.reconciler.settled(timeoutMs) : Promise.resolve(true);
  }

  /** The ClusterLoadAssignment for `view` (proto3 JSON, original field names). */
  assignment(view: readonly BackendView[]): Record<string, unknown> {
    const lbEndpoints: unknown[] = [];
    for (const b of view) {
      let t: { host: string; port: number };
      try {
        t = targetOf(b.address, this.options);
      } catch {
        continue;
      }
      const pct = weightPercent(b, this.options);
      lbEndpoints.push({
        endpoint: { address: { socket_address: { address: t.host, port_value: t.port } } },
        metadata: { filter_metadata: { qhcp: { backend: b.address, state: String(b.state) } } },
        health_status: envoyHealth(b),
        ...(pct !== undefined ? { load_balancing_weight: pct } : {}),
      });
    }
    return { '@type': CLA_TYPE, cluster_name: this.options.cluster, endpoints: [{ lb_endpoints: lbEndpoints }] };
  }

  private async run(): Promise<void> {
    if (this.view.length === 0) return;
    const body = JSON.stringify(this.assignment(this.view));
    if (body === this.written) return;
    const version = `qhcp-${Date.now()}-${this.writes + 1}`;
    const text = `${JSON.stringify({ version_info: version, type_url: CLA_TYPE, resources: [JSON.parse(body)] }, null, 2)}\n`;
    try {
      writeAtomic(this.options.file, text);
    } catch (e) {
      throw new SyncCommandError(`write ${this.options.file}`, (e as Error).message);
    }
    this.writes++;
    this.written = body;
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'sync',
  roles: ['loadbalancer'],
  schema,
  setup: (options) => new EnvoyEds(options),
});
