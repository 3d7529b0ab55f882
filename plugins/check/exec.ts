/**
 * exec: runs a command; its exit status is the outcome, in the Nagios/Consul convention: 0 =
 * passing, 1 = warning, anything else (or a signal) = critical. The first line of its output
 * (stdout and stderr as they arrive, at most `maxOutputBytes` read) is the reason, with control
 * characters escaped; with no output the reason is `exit N`.
 *
 * `command` is an argv array (no shell), or one string run by `/bin/sh -c` with `shell: true`.
 * The program must exist when the check is created (an absolute path, a path relative to `cwd`,
 * or a name found in PATH), so a typo is a config error at start-up. The command runs in its own
 * process group: on abort (the check's timeout) the whole group gets SIGKILL at once, and
 * whatever the command leaves running in its group when it exits is killed too, so a check run
 * every few seconds can never pile up processes. (A child that calls setsid() leaves the group
 * and is out of reach, as with any process-group supervisor.)
 */
import { spawn } from 'node:child_process';
import { accessSync, statSync, constants } from 'node:fs';
import { delimiter, isAbsolute, join, resolve } from 'node:path';
import { ConfigError, errorText } from '../../core/errors.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import type { Check, CheckContext, CheckKind, CheckOutcome } from '../../core/check/types.ts';
import { abortedOutcome, firstLine, requireDirectory, MAX_REASON } from './common.ts';
import { sanitize } from '../../core/util/sanitize.ts';

const TYPE = 'exec';
const SHELL = '/bin/sh';
/** After the command exits, how long its output pipes may stay open (held by a leftover child). */
const CLOSE_GRACE_MS = 200;

const schema = {
  type: 'object',
  additionalProperties: false,
  required: ['command'],
  properties: {
    command: {
      anyOf: [
        { type: 'array', items: { type: 'string' }, minItems: 1, maxItems: 256 },
        { type: 'string', minLength: 1, maxLength: 8192 },
      ],
      description: 'argv array (program first, no shell), or with shell: true one string for /bin/sh -c',
    },
    shell: { type: 'boolean', default: false, description: 'run the command string with /bin/sh -c' },
    cwd: { type: 'string', minLength: 1, description: "working directory, relative to the config file (default: the config file's directory)" },
    env: { type: 'object', additionalProperties: { type: 'string' }, default: {}, description: "extra environment variables (on top of the agent's)" },
    maxOutputBytes: { type: 'integer', minimum: 64, maximum: 65_536, default: 4096, description: 'output bytes read at most; the rest is discarded' },
  },
} as const;

/** The options of one check, as validated (defaults filled in from the schema). */
export type ExecCheckOptions = FromSchema<typeof schema>;

function isExecutableFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The program's absolute path. @throws ConfigError when it is missing or not executable */
function findProgram(program: string, cwd: string, pathVar: string | undefined): string {
  if (program.includes('/')) {
    const path = isAbsolute(program) ? program : resolve(cwd, program);
    if (!isExecutableFile(path)) throw new ConfigError([`${TYPE}: command ${JSON.stringify(program)} is not an executable file (${path})`]);
    return path;
  }
  for (const dir of (pathVar ?? '').split(delimiter)) {
    if (!dir) continue;
    const path = resolve(cwd, join(dir, program));
    if (isExecutableFile(path)) return path;
  }
  throw new ConfigError([`${TYPE}: command ${JSON.stringify(program)} not found in PATH`]);
}

function killGroup(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    /* ESRCH: the group is already empty */
  }
}

function create(options: ExecCheckOptions, ctx: CheckContext): Check {
  const shell = options.shell;
  const cwd = ctx.resolvePath(options.cwd ?? '.');
  requireDirectory(cwd, `${TYPE}: cwd`);
  const env = { ...process.env, ...options.env };
  const maxOutput = options.maxOutputBytes;
  let program: string;
  let args: string[];
  if (shell) {
    if (typeof options.command !== 'string') throw new ConfigError([`${TYPE}: with shell: true, command is one string`]);
    program = findProgram(SHELL, cwd, undefined);
    args = ['-c', options.command];
  } else {
    const argv = typeof options.command === 'string' ? [options.command] : options.command;
    if (!Array.isArray(argv) || argv.length === 0 || argv.some((a) => typeof a !== 'string')) {
      throw new ConfigError([`${TYPE}: command must be an argv array of strings (or a string with shell: true)`]);
    }
    if (typeof options.command === 'string' && /\s/.test(options.command) && !isExecutableFile(resolve(cwd, options.command))) {
      throw new ConfigError([`${TYPE}: command ${JSON.stringify(options.command)} has spaces: give an argv array, or set shell: true`]);
    }
    program = findProgram(argv[0]!, cwd, env.PATH);
    args = argv.slice(1);
  }

  return {
    run(signal: AbortSignal): Promise<CheckOutcome> {
      const started = performance.now();
      if (signal.aborted) return Promise.resolve(abortedOutcome(signal, started));
      return new Promise<CheckOutcome>((resolveRun) => {
        const chunks: Buffer[] = [];
        let size = 0;
        let settled = false;
        let graceTimer: NodeJS.Timeout | undefined;
        const child = spawn(program, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
        const collect = (chunk: Buffer) => {
          if (size >= maxOutput) return; // keep draining so the command never blocks on a full pipe
          const take = Math.min(chunk.length, maxOutput - size);
          chunks.push(take === chunk.length ? chunk : chunk.subarray(0, take));
          size += take;
        };
        child.stdout!.on('data', collect);
        child.stderr!.on('data', collect);
        const finish = (outcome: CheckOutcome) => {
          if (settled) return;
          settled = true;
          clearTimeout(graceTimer);
          signal.removeEventListener('abort', onAbort);
          killGroup(child.pid);
          child.stdout!.destroy();
          child.stderr!.destroy();
          resolveRun(outcome);
        };
        const onAbort = () => finish(abortedOutcome(signal, started));
        signal.addEventListener('abort', onAbort, { once: true });
        child.once('error', (e) => finish({ status: 'critical', output: sanitize(`cannot run ${argvText()}: ${errorText(e)}`, MAX_REASON) }));
        child.once('exit', (code, sig) => {
          const decide = () => {
            const line = firstLine(Buffer.concat(chunks).toString('utf8'));
            if (sig !== null) return finish({ status: 'critical', output: line || `killed by ${sig}` });
            const status = code === 0 ? 'passing' : code === 1 ? 'warning' : 'critical';
            finish({ status, output: line || `exit ${code}` });
          };
          // The pipes close when every holder is gone; a leftover child may hold them, so wait a little.
          if (child.stdout!.readableEnded && child.stderr!.readableEnded) return decide();
          graceTimer = setTimeout(decide, CLOSE_GRACE_MS);
          child.once('close', decide);
        });
      });
      function argvText(): string {
        return shell ? SHELL : program;
      }
    },
  };
}

const exec: CheckKind<ExecCheckOptions> = { type: TYPE, schema, create };
export default exec;
