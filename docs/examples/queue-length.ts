/**
 * queue-length: an example custom metric plugin (walked through in docs/plugins.md).
 *
 * Reports how many jobs wait in a work queue as one metric (default `queueLength`, unit
 * `jobs`). The length comes from a file, one job per non-empty line (a spool file another
 * program appends to and trims), or from a function you pass in a TypeScript config. Enable it
 * on the servers in qhcp.config.ts:
 *
 *   plugins: [['./docs/examples/queue-length.ts', { file: '/var/spool/app/jobs.txt', interval: 2 }]]
 *   plugins: [['./docs/examples/queue-length.ts', { read: () => jobs.length }]]
 *
 * A balancer can then read `metrics.queueLength` of each server (see sticky-balancer.ts).
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { CoreLike, MetricDefinition } from '../../core/plugin/hooks.ts';
import type { QhcpPlugin } from '../../core/plugin/loader.ts';

const PLUGIN_NAME = 'queue-length';

export interface QueueLengthOptions {
  /** A file with one queued job per non-empty line; relative to the working directory. */
  file?: string;
  /** Or: a function returning the queue length (TypeScript/JS configs only). */
  read?: () => number | Promise<number>;
  /** The metric's name (default `queueLength`). */
  metric?: string;
  /** Seconds between two reads at most once (default 1); the core never asks more often. */
  interval?: number;
}

export default class QueueLengthPlugin implements QhcpPlugin {
  /** Options schema: the loader validates against it and fills the defaults. */
  static schema = {
    type: 'object',
    additionalProperties: false,
    properties: {
      file: { type: 'string', minLength: 1 },
      // JSON schema has no "function" type: `read` is checked in the constructor.
      read: {},
      metric: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$', default: 'queueLength' },
      interval: { type: 'number', minimum: 0.1, maximum: 3600, default: 1 },
    },
  };

  readonly name = PLUGIN_NAME;
  readonly family = 'metrics' as const;
  readonly roles = ['server' as const];
  private readonly metric: string;
  private readonly intervalMs: number;
  private readonly read: () => Promise<number>;

  constructor(options: QueueLengthOptions = {}) {
    const { file, read } = options;
    if (read !== undefined && typeof read !== 'function') throw new Error(`options.read: must be a function (got ${typeof read})`);
    if ((file === undefined) === (read === undefined)) throw new Error('options: give exactly one of `file` or `read`');
    this.metric = options.metric ?? 'queueLength';
    this.intervalMs = (options.interval ?? 1) * 1000;
    this.read = read ? async () => read() : countLines(resolve(file!));
  }

  apply(core: CoreLike): void {
    // Declare the metric once: its unit, meaning and how often it may be sampled.
    core.hooks.metricDefinitions.tap(PLUGIN_NAME, (defs): MetricDefinition[] => [
      ...defs,
      { name: this.metric, unit: 'jobs', help: 'jobs waiting in the work queue', plugin: PLUGIN_NAME, sampleIntervalMs: this.intervalMs },
    ]);
    // Contribute to each background sample. The core skips this tap while the metric is not
    // due, bounds it by the plugin timeout, and logs (and leaves out the metric) if it throws.
    core.hooks.collect.tapPromise(PLUGIN_NAME, async (report) => {
      const n = await this.read();
      if (!Number.isInteger(n) || n < 0) throw new Error(`queue length must be a whole number >= 0, got ${n}`);
      report.set(this.metric, n);
    });
  }
}

/** Counts non-empty lines; a missing file is an empty queue. */
function countLines(path: string): () => Promise<number> {
  return async () => {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw e;
    }
    let n = 0;
    for (const line of text.split('\n')) if (line.trim() !== '') n++;
    return n;
  };
}
