/**
 * nginx (sync): open-source nginx has no runtime API, so the plugin writes an `upstream` block
 * to an include file (atomically: a temporary file, then rename) and runs a reload command (an
 * argv, no shell: `nginx -s reload` by default), only when the rendered set changed, and at most
 * once per `minReloadIntervalMs` (changes in between are coalesced into the next reload). Every
 * backend is listed: ready and unknown ones with their weight, the others marked `down` (so
 * the block stays valid when none is ready). An optional `testCommand` (`nginx -t`) runs first;
 * when it fails the previous file is put back. Failures are logged with the command and retried.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import { ConfigError } from '../../core/errors.ts';
import { Reconciler, RETRY_SCHEMA, SyncCommandError, TARGET_SCHEMA, WEIGHT_SCHEMA, checkTargets, formatAddress, intentOf, targetOf, weightPercent, writeAtomic, type TargetOptions, type WeightOptions } from './common.ts';

const PLUGIN_NAME = 'nginx';

const ARGV = { type: 'array', items: { type: 'string', minLength: 1, maxLength: 4096, description: 'one argument' }, maxItems: 64 } as const;

/** Runs argv (no shell); resolves with its output. @throws SyncCommandError with the command and its stderr */
export function runArgv(argv: string[], timeoutMs: number): Promise<string> {
  const command = argv.join(' ');
  return new Promise((resolve, reject) => {
    execFile(argv[0]!, argv.slice(1), { timeout: timeoutMs, maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new SyncCommandError(command, `${err.message.split('\n')[0]}${stderr ? `: ${stderr.trim().slice(-500)}` : ''}`));
      else resolve(stdout);
    });
  });
}

const schema = {
  type: 'object',
  additionalProperties: false,
  required: ['file', 'upstream'],
  properties: {
    file: { type: 'string', minLength: 1, maxLength: 4096, description: 'the include file to write (nginx must `include` it inside `http { }`)' },
    upstream: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,100}$', description: 'the upstream block\'s name (proxy_pass http://NAME)' },
    directives: { ...ARGV, items: { type: 'string', pattern: '^[^{};\\n]{1,500}$', description: 'a directive without ;' }, default: [], description: 'extra directives inside the upstream block, e.g. "least_conn", "keepalive 16"' },
    reloadCommand: { ...ARGV, minItems: 1, default: ['nginx', '-s', 'reload'], description: 'argv run after the file changed (no shell)' },
    testCommand: { ...ARGV, default: [], description: 'argv run before the reload (e.g. ["nginx", "-t"]); on failure the previous file is put back; [] = none' },
    minReloadIntervalMs: { type: 'integer', minimum: 0, maximum: 3_600_000, default: 1000, description: 'at most one reload per this interval; changes in between wait for the next one' },
    commandTimeoutMs: { type: 'integer', minimum: 100, maximum: 600_000, default: 10_000, description: 'time for the test and reload commands' },
    ...TARGET_SCHEMA,
    ...WEIGHT_SCHEMA,
    ...RETRY_SCHEMA,
  },
} as const;

export type NginxSyncOptions = FromSchema<typeof schema>;

/** The plugin's body (definePlugin below). */
export class NginxSync {
  private view: readonly BackendView[] = [];
  private reconciler: Reconciler | undefined;
  /** The text nginx was last reloaded with (undefined: not yet). */
  private applied: string | undefined;
  private lastReloadAt = 0;
  /** Reloads run so far. */
  reloads = 0;

  constructor(readonly options: NginxSyncOptions) {
    const problems = checkTargets(options);
    if (problems.length) throw new ConfigError(problems.map((p) => `nginx: ${p}`));
  }

  apply(core: CoreLike): void {
    this.reconciler = new Reconciler(PLUGIN_NAME, core.logger, () => this.run(), this.options);
    core.hooks.sync.tap(PLUGIN_NAME, (u) => {
      this.view = u.view;
      this.reconciler!.poke();
    });
    core.hooks.stop.tapPromise(PLUGIN_NAME, async () => {
      await this.reconciler!.halt(1000);
    });
  }

  settled(timeoutMs: number): Promise<boolean> {
    return this.reconciler ? this.reconciler.settled(timeoutMs) : Promise.resolve(true);
  }

  /** The include file's text for `view`. */
  render(view: readonly BackendView[]): string {
    const lines = [`# Written by qhcp (nginx sync plugin); do not edit: it is rewritten when backends change.`, `upstream ${this.options.upstream} {`];
    for (const d of this.options.directives) lines.push(`    ${d};`);
    for (const b of view) {
      let target: string;
      try {
        target = formatAddress(targetOf(b.address, this.options));
      } catch {
        continue;
      }
      const intent = intentOf(b);
      const ok = intent === 'ready' || intent === 'unknown';
      const pct = ok ? weightPercent(b, this.options) : undefined;
      lines.push(`    server ${target}${pct !== undefined ? ` weight=${pct}` : ''}${ok ? '' : ' down'}; # ${b.address}`);
    }
    lines.push('}', '');
    return lines.join('\n');
  }

  private async run(): Promise<void> {
    if (this.view.length === 0) return;
    const wait = this.lastReloadAt + this.options.minReloadIntervalMs - Date.now();
    if (wait > 0 && this.applied !== undefined) await new Promise((r) => setTimeout(r, wait));
    const text = this.render(this.view);
    if (text === this.applied) return;
    const file = this.options.file;
    let previous: string | undefined;
    try {
      previous = readFileSync(file, 'utf8');
    } catch {
      previous = undefined;
    }
    if (previous !== text) {
      try {
        writeAtomic(file, text);
      } catch (e) {
        throw new SyncCommandError(`write ${file}`, (e as Error).message);
      }
      if (this.options.testCommand.length) {
        try {
          await runArgv(this.options.testCommand, this.options.commandTimeoutMs);
        } catch (e) {
          if (previous !== undefined) writeAtomic(file, previous);
          throw e;
        }
      }
    }
    this.lastReloadAt = Date.now();
    await runArgv(this.options.reloadCommand, this.options.commandTimeoutMs);
    this.reloads++;
    this.applied = text;
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'sync',
  roles: ['loadbalancer'],
  schema,
  setup: (options) => new NginxSync(options),
});
