/**
 * file: a flag file an operator creates on the host. By default a maintenance file: while it
 * exists the outcome is `maint` (the agent reports MAINT), with the file's first line as the
 * reason (`touch` gives an empty file: the reason is then `maintenance file <path>`); when it is
 * gone the check passes. With `mustExist: true` it is a ready file instead: present = passing,
 * absent = critical (a deploy script creates it when the service is warmed up).
 *
 * The path is relative to the config file. Its directory must exist when the check is created
 * (a typo there would otherwise be a flag nobody can ever raise); the file itself need not. Only
 * the first `maxReadBytes` bytes are read.
 *
 * The check also watches the file's directory (fs.watch: inotify on Linux), so a flag raised or
 * lowered is acted on within milliseconds, not at the next interval; the interval stays the
 * fallback where watching is not possible (some network file systems), and the runner bounds how
 * often a busy directory can make it run.
 */
import { watch as watchDir, type FSWatcher } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import type { FromSchema } from '../../core/config/schema-types.ts';
import type { Check, CheckContext, CheckKind, CheckOutcome } from '../../core/check/types.ts';
import { ConfigError, errorText } from '../../core/errors.ts';
import { firstLine, requireParentDirectory, MAX_REASON } from './common.ts';
import { sanitize } from '../../core/util/sanitize.ts';

const TYPE = 'file';
const MAX_READ = 4096;

const schema = {
  type: 'object',
  additionalProperties: false,
  required: ['path'],
  properties: {
    path: { type: 'string', minLength: 1, maxLength: 4096, description: 'the flag file, relative to the config file; its directory must exist' },
    mustExist: {
      type: 'boolean',
      default: false,
      description: 'false: a maintenance file (present = maint, absent = passing); true: a ready file (present = passing, absent = critical)',
    },
  },
} as const;

/** The options of one check, as validated (defaults filled in from the schema). */
export type FileCheckOptions = FromSchema<typeof schema>;

/** The first line of the file (at most MAX_READ bytes read), '' for an empty file. */
async function readFirstLine(path: string): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(MAX_READ);
    const { bytesRead } = await fh.read(buf, 0, MAX_READ, 0);
    return firstLine(buf.subarray(0, bytesRead).toString('utf8'));
  } finally {
    await fh.close();
  }
}

function create(options: FileCheckOptions, ctx: CheckContext): Check {
  if (typeof options.path !== 'string' || options.path.length === 0) throw new ConfigError([`${TYPE}: path must be a non-empty string`]);
  const path = ctx.resolvePath(options.path);
  requireParentDirectory(path, `${TYPE}: path ${JSON.stringify(path)}`);
  const mustExist = options.mustExist;
  const shown = sanitize(path, MAX_REASON);
  const name = basename(path);
  let watcher: FSWatcher | undefined;

  return {
    watch(changed: () => void): void {
      try {
        watcher = watchDir(dirname(path), { persistent: false }, (_event, file) => {
          // Another file in the directory is not our business; no name given (some platforms): maybe ours.
          if (file === null || file === name) changed();
        });
        watcher.on('error', (e) => {
          ctx.logger.warn('file check: watching stopped; checking on the interval only', { path: shown, error: errorText(e) });
          watcher?.close();
        });
      } catch (e) {
        ctx.logger.warn('file check: cannot watch the directory; checking on the interval only', { path: shown, error: errorText(e) });
      }
    },
    close(): void {
      watcher?.close();
      watcher = undefined;
    },
    async run(): Promise<CheckOutcome> {
      let present: boolean;
      let isFile = false;
      try {
        isFile = (await stat(path)).isFile();
        present = true;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT' && code !== 'ENOTDIR') return { status: 'critical', output: sanitize(`cannot stat ${path}: ${errorText(e)}`, MAX_REASON) };
        present = false;
      }
      if (mustExist) return present ? { status: 'passing', output: `ready file ${shown} present` } : { status: 'critical', output: `ready file ${shown} missing` };
      if (!present) return { status: 'passing', output: `no maintenance file` };
      let line = '';
      if (isFile) {
        try {
          line = await readFirstLine(path);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { status: 'passing', output: 'no maintenance file' };
          // Present but unreadable: it was raised, so it still counts.
          line = sanitize(`maintenance file ${path} (unreadable: ${errorText(e)})`, MAX_REASON);
        }
      }
      return { status: 'maint', output: line || `maintenance file ${shown}` };
    },
  };
}

const file: CheckKind<FileCheckOptions> = { type: TYPE, schema, create };
export default file;
