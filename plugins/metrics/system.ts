/**
 * system-metrics: CPU %, memory %, load average, and a derived loadScore (0..1), sampled in
 * the background by the core's sampler; a health check reads the cached values only.
 */
import os from 'node:os';
import type { CoreLike, MetricDefinition } from '../../core/hooks.ts';
import type { QhcpPlugin } from '../../core/plugins.ts';

const PLUGIN_NAME = 'system-metrics';

function cpuTimes(): { idle: number; total: number } {
  let idle = 0;
  let total = 0;
  for (const c of os.cpus()) {
    const t = c.times;
    idle += t.idle;
    total += t.user + t.nice + t.sys + t.irq + t.idle;
  }
  return { idle, total };
}

export default class SystemMetricsPlugin implements QhcpPlugin {
  static schema = { type: 'object', additionalProperties: false, properties: {} };
  readonly name = PLUGIN_NAME;
  readonly family = 'metrics' as const;
  readonly roles = ['server' as const];
  private prev = cpuTimes();

  constructor(_options: Record<string, unknown> = {}) {}

  static readonly definitions: Omit<MetricDefinition, 'plugin'>[] = [
    { name: 'cpu', unit: '%', help: 'CPU busy, all cores, since the previous sample' },
    { name: 'memory', unit: '%', help: 'memory used (total - available) / total' },
    { name: 'load1', unit: '', help: '1-minute load average' },
    { name: 'loadScore', unit: '0..1', help: 'max(cpu, memory, load1/cores) / 100, clamped' },
  ];

  apply(core: CoreLike): void {
    core.hooks.metricDefinitions.tap(PLUGIN_NAME, (defs) => [...defs, ...SystemMetricsPlugin.definitions.map((d) => ({ ...d, plugin: PLUGIN_NAME }))]);
    core.hooks.collect.tap(PLUGIN_NAME, (report) => {
      const now = cpuTimes();
      const dt = now.total - this.prev.total;
      const cpu = dt > 0 ? (100 * (dt - (now.idle - this.prev.idle))) / dt : 0;
      this.prev = now;
      const memory = (100 * (os.totalmem() - os.freemem())) / os.totalmem();
      const load1 = os.loadavg()[0]!;
      report.set('cpu', Math.round(cpu * 10) / 10);
      report.set('memory', Math.round(memory * 10) / 10);
      report.set('load1', Math.round(load1 * 100) / 100);
      const score = Math.min(1, Math.max(0, Math.max(cpu / 100, memory / 100, load1 / os.cpus().length)));
      report.set('loadScore', Math.round(score * 1000) / 1000);
    });
  }
}
