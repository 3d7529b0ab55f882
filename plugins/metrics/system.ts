/**
 * system-metrics: CPU (overall and per core), memory, load averages, disk use per mount, network
 * throughput, process count, uptime, and a derived `loadScore` (0..1) for load-aware balancers.
 *
 * Every source is read in the background (sampler.ts; readers.ts: /proc and statfs on Linux,
 * node:os and systeminformation elsewhere), each on its own interval with its own timeout; the
 * core's sampler calls `collect`, which only copies the cached values with the time each was
 * read, so the report's age is that of its oldest value. A source that fails or hangs (a stuck
 * disk) drops only its own metrics.
 */
import type { CoreLike, MetricDefinition, MetricsReport } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import { Sampler, type Source, type Values } from './sampler.ts';
import { systemReaders, type DiskUse, type NetCounters, type SystemReaders } from './readers.ts';

const PLUGIN_NAME = 'system-metrics';

/** `f(x)` now when `x` is a value, after it settles when it is a promise (synchronous readers stay synchronous). */
function then<T, R>(x: T | Promise<T>, f: (v: T) => R): R | Promise<R> {
  return typeof (x as Promise<T> | null)?.then === 'function' ? (x as Promise<T>).then(f) : f(x as T);
}

export const SOURCE_NAMES = ['cpu', 'memory', 'load', 'disk', 'network', 'processes', 'uptime'] as const;
export type SourceName = (typeof SOURCE_NAMES)[number];

/** Slow sources (disks: a statfs per mount, `df` off Linux; processes: a /proc listing, `ps` off Linux) default to a longer interval. */
const SLOW_SOURCES: ReadonlySet<SourceName> = new Set(['disk', 'processes']);

const sourceSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    enabled: { type: 'boolean', description: 'false: neither read nor reported' },
    intervalMs: { type: 'integer', minimum: 50, maximum: 3_600_000, description: 'this source\'s read interval (default: intervalMs, or slowIntervalMs for disk and processes)' },
    timeoutMs: { type: 'integer', minimum: 10, maximum: 600_000, description: 'this source\'s read timeout (default: timeoutMs)' },
  },
} as const;
const weight = <D extends number>(d: D, of: string) => ({ type: 'number', minimum: 0, maximum: 100, default: d, description: `weight of ${of} in loadScore (0: left out)` }) as const;

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    intervalMs: { type: 'integer', minimum: 50, maximum: 3_600_000, default: 1000, description: 'how often each fast source is read' },
    slowIntervalMs: { type: 'integer', minimum: 50, maximum: 3_600_000, default: 30000, description: 'how often disk and processes are read (on Linux a statfs per mount and a /proc listing; elsewhere `df` and `ps`)' },
    timeoutMs: { type: 'integer', minimum: 10, maximum: 600_000, default: 2000, description: 'a read taking longer drops that source\'s metrics' },
    sources: {
      type: 'object',
      additionalProperties: false,
      default: {},
      description: `per-source settings, by source: ${SOURCE_NAMES.join(', ')}`,
      properties: { cpu: sourceSchema, memory: sourceSchema, load: sourceSchema, disk: sourceSchema, network: sourceSchema, processes: sourceSchema, uptime: sourceSchema },
    },
    perCore: { type: 'boolean', default: true, description: 'report `cpu.core<N>`' },
    maxCores: { type: 'integer', minimum: 0, maximum: 128, default: 64, description: 'at most this many `cpu.core<N>` metrics (a report holds at most 256 metrics)' },
    mounts: { type: 'array', items: { type: 'string', minLength: 1 }, maxItems: 64, description: 'mount points to report (default: all local file systems)' },
    maxMounts: { type: 'integer', minimum: 0, maximum: 64, default: 16, description: 'at most this many `disk.<mount>.usedPct` metrics' },
    interfaces: { type: 'array', items: { type: 'string', minLength: 1 }, maxItems: 64, description: 'interfaces summed into `net.*` (default: all but loopback)' },
    loadScore: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        combine: { enum: ['max', 'mean'], default: 'max', description: 'max of the weighted inputs, or their weighted mean' },
        weights: {
          type: 'object',
          additionalProperties: false,
          default: {},
          properties: { cpu: weight(1, 'cpu/100'), memory: weight(1, 'memory/100'), load: weight(1, 'load1/cores') },
        },
      },
    },
  },
} as const;

/** The options, validated with defaults filled in. */
export type SystemMetricsOptions = FromSchema<typeof schema>;

/** A metric name from a mount point: `/` -> `root`, `/var/lib` -> `var_lib` (the metric-name pattern). */
export function mountKey(mount: string): string {
  const key = mount.replace(/^[/\\]+|[/\\]+$/g, '').replace(/[^A-Za-z0-9_:-]+/g, '_');
  return key === '' ? 'root' : /^[A-Za-z_]/.test(key) ? key : `_${key}`;
}

const LOOPBACK = /^(lo\d*|Loopback.*)$/i;
const round = (v: number, digits: number) => Math.round(v * 10 ** digits) / 10 ** digits;
const clamp01 = (v: number) => Math.min(1, Math.max(0, v));

/** The plugin's body: the background sampler of its sources and what `collect` copies from it. */
export class SystemMetrics {
  readonly sampler: Sampler;
  private readonly cores: number;
  /** Enabled sources and their read interval (ms). */
  private readonly intervals = new Map<SourceName, number>();
  private mountNames = new Map<string, string>();
  private prevNet: { rx: number; tx: number; at: number } | undefined;
  private logger: CoreLike['logger'] | undefined;

  /** `readers`: the real machine by default, fakes in tests. */
  constructor(
    private readonly opts: SystemMetricsOptions,
    private readonly readers: SystemReaders = systemReaders(),
  ) {
    this.cores = Math.max(1, readers.cores());
    const sources: Source[] = [];
    for (const name of SOURCE_NAMES) {
      const o = opts.sources[name] ?? {};
      if (o.enabled === false) continue;
      const intervalMs = o.intervalMs ?? (SLOW_SOURCES.has(name) ? this.opts.slowIntervalMs : this.opts.intervalMs);
      this.intervals.set(name, intervalMs);
      sources.push({
        name,
        intervalMs,
        timeoutMs: o.timeoutMs ?? this.opts.timeoutMs,
        read: () => this.read(name),
      });
    }
    this.sampler = new Sampler(sources, (source, message) => this.logger?.limited(`${PLUGIN_NAME}:${source}`, `${PLUGIN_NAME}: ${source} read failed, its metrics are left out until it answers`, { source, error: message }));
  }

  /** The static metrics; per-core and per-mount names are added once the first reading named them. */
  definitions(): MetricDefinition[] {
    const defs: MetricDefinition[] = [];
    const add = (source: SourceName, name: string, unit: string, help: string) => {
      const every = this.intervals.get(source);
      if (every !== undefined) defs.push({ name, unit, help, plugin: PLUGIN_NAME, sampleIntervalMs: every });
    };
    add('cpu', 'cpu', '%', 'CPU busy, all cores, since the previous reading');
    if (this.opts.perCore) for (let i = 0; i < Math.min(this.cores, this.opts.maxCores); i++) add('cpu', `cpu.core${i}`, '%', `CPU busy, core ${i}`);
    add('memory', 'memory', '%', 'memory used: (total - available) / total');
    add('load', 'load1', '', '1-minute load average');
    add('load', 'load5', '', '5-minute load average');
    add('load', 'load15', '', '15-minute load average');
    for (const [mount, key] of this.mountNames) add('disk', `disk.${key}.usedPct`, '%', `space used on ${mount}`);
    add('network', 'net.rxBytesPerSec', 'B/s', 'bytes received per second, all non-loopback interfaces');
    add('network', 'net.txBytesPerSec', 'B/s', 'bytes sent per second, all non-loopback interfaces');
    add('processes', 'processes', '', 'number of processes');
    add('uptime', 'uptime', 's', 'seconds since boot');
    defs.push({ name: 'loadScore', unit: '0..1', help: 'derived from cpu, memory and load1/cores (docs/plugins-builtin.md, "loadScore")', plugin: PLUGIN_NAME, sampleIntervalMs: this.opts.intervalMs });
    return defs;
  }

  /** One reading of one source (runs in the background sampler only). */
  private read(name: SourceName): Values | Promise<Values> {
    const r = this.readers;
    switch (name) {
      case 'cpu':
        return then(r.currentLoad(), (l) => {
          const out: Values = { cpu: round(l.currentLoad, 1) };
          if (this.opts.perCore) for (let i = 0; i < l.cpus.length && i < this.opts.maxCores; i++) out[`cpu.core${i}`] = round(l.cpus[i]!.load, 1);
          return out;
        });
      case 'memory':
        return then(r.mem(), (m): Values => (m.total > 0 ? { memory: round((100 * (m.total - m.available)) / m.total, 1) } : {}));
      case 'load': {
        const [l1, l5, l15] = r.loadavg();
        return { load1: round(l1!, 2), load5: round(l5!, 2), load15: round(l15!, 2) };
      }
      case 'disk':
        return then(r.fsSize(), (list) => this.readDisks(list));
      case 'network':
        return then(r.networkStats(), (list) => this.readNetwork(list));
      case 'processes':
        return then(r.processes(), (p) => ({ processes: p.all }));
      case 'uptime':
        return { uptime: Math.round(r.uptime()) };
    }
  }

  private readDisks(list: DiskUse[]): Values {
    const out: Values = {};
    const wanted = this.opts.mounts ? new Set(this.opts.mounts) : undefined;
    for (const fs of list) {
      if (wanted ? !wanted.has(fs.mount) : fs.size <= 0) continue;
      if (typeof fs.use !== 'number' || !Number.isFinite(fs.use)) continue;
      let key = this.mountNames.get(fs.mount);
      if (key === undefined) {
        if (this.mountNames.size >= this.opts.maxMounts) continue;
        // Two mounts can sanitise to one name (/a_b and /a/b): keep both, numbered.
        const base = mountKey(fs.mount).slice(0, 100);
        const taken = new Set(this.mountNames.values());
        key = base;
        for (let n = 2; taken.has(key); n++) key = `${base}_${n}`;
        this.mountNames.set(fs.mount, key);
      }
      out[`disk.${key}.usedPct`] = round(fs.use, 1);
    }
    return out;
  }

  /** Bytes/s over all selected interfaces since the previous reading (none on the first). */
  private readNetwork(list: NetCounters[]): Values {
    const wanted = this.opts.interfaces ? new Set(this.opts.interfaces) : undefined;
    let rx = 0;
    let tx = 0;
    for (const n of list) {
      if (wanted ? !wanted.has(n.iface) : LOOPBACK.test(n.iface)) continue;
      rx += n.rx_bytes;
      tx += n.tx_bytes;
    }
    const now = Date.now();
    const prev = this.prevNet;
    this.prevNet = { rx, tx, at: now };
    const dt = prev ? (now - prev.at) / 1000 : 0;
    // A counter that went back (interface gone, wrapped) yields no rate for this reading.
    if (!prev || dt <= 0 || rx < prev.rx || tx < prev.tx) return {};
    return { 'net.rxBytesPerSec': Math.round((rx - prev.rx) / dt), 'net.txBytesPerSec': Math.round((tx - prev.tx) / dt) };
  }

  /**
   * loadScore = combine(w.cpu * cpu/100, w.memory * memory/100, w.load * load1/cores), each input
   * clamped to 0..1; combine is `max` (default) or the weighted `mean`. Inputs with weight 0 or
   * no fresh value are left out; with none left there is no loadScore.
   */
  loadScore(values: Values): number | undefined {
    const ls = this.opts.loadScore;
    const w = ls.weights;
    const inputs: Array<[number, number]> = [];
    if (w.cpu > 0 && values.cpu !== undefined) inputs.push([w.cpu, clamp01(values.cpu / 100)]);
    if (w.memory > 0 && values.memory !== undefined) inputs.push([w.memory, clamp01(values.memory / 100)]);
    if (w.load > 0 && values.load1 !== undefined) inputs.push([w.load, clamp01(values.load1 / this.cores)]);
    if (inputs.length === 0) return undefined;
    const score = ls.combine === 'max' ? Math.max(...inputs.map(([wi, x]) => wi * x)) : inputs.reduce((s, [wi, x]) => s + wi * x, 0) / inputs.reduce((s, [wi]) => s + wi, 0);
    return round(clamp01(score), 3);
  }

  /** Copies the cached values into a report; the only work done on the core's sampling tick. */
  collect(report: MetricsReport, now = Date.now()): void {
    const inputs: Values = {};
    let oldest = Infinity;
    this.sampler.forEach((name, value, at) => {
      report.set(name, value, at);
      if (name === 'cpu' || name === 'memory' || name === 'load1') {
        inputs[name] = value;
        oldest = Math.min(oldest, at);
      }
    }, now);
    const score = this.loadScore(inputs);
    if (score !== undefined) report.set('loadScore', score, oldest);
  }

  apply(core: CoreLike): void {
    this.logger = core.logger;
    core.hooks.start.tapPromise(PLUGIN_NAME, async () => {
      // Wait for the first readings so the first report is full, but well inside the plugin
      // timeout: a source that hangs from the start must not abort start-up.
      await this.sampler.start(Math.min(1000, (core.config.pluginTimeout * 1000) / 2));
    });
    core.hooks.stop.tap(PLUGIN_NAME, () => {
      this.sampler.stop();
      this.readers.close?.();
    });
    core.hooks.metricDefinitions.tap(PLUGIN_NAME, (defs) => [...defs, ...this.definitions()]);
    core.hooks.collect.tap(PLUGIN_NAME, (report) => this.collect(report));
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'metrics',
  roles: ['server'],
  schema,
  setup: (options) => new SystemMetrics(options),
});
