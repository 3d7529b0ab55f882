/**
 * queue-length: an example custom metric plugin (walked through in docs/plugins.md).
 *
 * Reports how many jobs wait in a work queue as one metric (default `queueLength`, unit
 * `jobs`). The length comes from a file, one job per non-empty line (a spool file another
 * program appends to and trims), or from a function you pass in a TypeScript config. Enable it
 * on the servers in qhcp.config.ts, by path (options checked at start-up):
 *
 *   plugins: [['./queue-length.ts', { file: 'jobs.txt', interval: 2 }]]
 *
 * or imported (options checked by the TypeScript compiler too):
 *
 *   import queueLength from './queue-length.ts';
 *   plugins: [queueLength({ read: () => jobs.length })]
 *
 * A relative `file` is taken from the directory of the config file. A balancer can then read
 * `metrics.queueLength` of each server (see sticky-balancer.ts).
 */
import { readFile } from 'node:fs/promises';
import { definePlugin, METRIC_NAME_SCHEMA } from 'qhcp';

export default definePlugin({
  name: 'queue-length',
  family: 'metrics',
  roles: ['server'],
  // The options schema: it types `options` below, the loader validates against it and fills
  // the defaults, and a wrong option is a start-up error naming it.
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      /** A file with one queued job per non-empty line; relative to the config file's directory. */
      file: { type: 'string', minLength: 1 },
      /** Or: a function returning the queue length (TypeScript/JS configs only). JSON schema has no function type. */
      read: {},
      metric: { ...METRIC_NAME_SCHEMA, default: 'queueLength' },
      /** Seconds between two reads at most (the core never asks more often). */
      interval: { type: 'number', minimum: 0.1, maximum: 3600, default: 1 },
    },
  },
  // What the schema cannot say; a throw here is a start-up error for this plugin entry.
  validate({ file, read }) {
    if (read !== undefined && typeof read !== 'function') throw new Error(`options.read: must be a function (got ${typeof read})`);
    if ((file === undefined) === (read === undefined)) throw new Error('options: give exactly one of `file` or `read`');
  },
  apply(core, options) {
    const { file, read, metric, interval } = options;
    const sample = typeof read === 'function' ? async () => Number(await (read as () => number | Promise<number>)()) : countLines(core.resolvePath(file!));
    // Declare the metric once: its unit, meaning and how often it may be sampled.
    core.hooks.metricDefinitions.tap('queue-length', (defs) => [
      ...defs,
      { name: metric, unit: 'jobs', help: 'jobs waiting in the work queue', plugin: 'queue-length', sampleIntervalMs: interval * 1000 },
    ]);
    // Contribute to each background sample. The core skips this tap while the metric is not
    // due, bounds it by the plugin timeout, and logs (and leaves out the metric) if it throws.
    core.hooks.collect.tapPromise('queue-length', async (report) => {
      const n = await sample();
      if (!Number.isInteger(n) || n < 0) throw new Error(`queue length must be a whole number >= 0, got ${n}`);
      report.set(metric, n);
    });
  },
});

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
