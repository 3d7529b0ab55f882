/**
 * The Node runtime flags the load balancer runs with (`qhcp loadbalancer` / `qhcp lb`), and the
 * relaunch that applies them. V8 sizes its young generation when the heap is set up, from the
 * command line only (`v8.setFlagsFromString` after start changes nothing for these), so the
 * load balancer's command starts Node again with them: `node <flags> <the same script> lb ...`.
 * Only this long-running command pays the second start (about one `node -e 0`, docs/operations.md,
 * "Memory"); `qhcp status`, `pick` and the rest never relaunch.
 *
 * Why: at N = 1000 backends the load balancer allocates a few MB a second (a check is a few
 * objects per backend), and V8 grows each of the young generation's two semi-spaces to 16 MB
 * for it: 32 MB of RSS that a smaller young generation does without, at a CPU cost within the
 * benchmark's noise (docs/benchmarks.md). The numbers are in LB_NODE_FLAGS's comment.
 *
 * How: Node >= 22.15 replaces the process (`process.execve`: same pid, nothing in between). Older
 * Node (20) has no exec: the first process starts the second in a process group of its own, passes
 * it stdio, forwards the signals an operator or a supervisor sends (each once: a terminal's Ctrl-C
 * reaches only the first), and exits with its exit code, or dies of the signal that ended it.
 * The second stops (as on SIGTERM) when the first goes away without a word (SIGKILL), so it is
 * never left behind.
 * Flags already on Node's command line are kept and not added twice: `node --max-semi-space-size=8
 * $(which qhcp) lb ...` runs with 8 and without a relaunch.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:os';

/**
 * What the load balancer's Node runs with, measured at N = 1000 (bench: `--only cost --sizes
 * 1000`; docs/benchmarks.md): the young generation's semi-spaces at most 4 MB instead of 16.
 */
export const LB_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4'];

/** Set in the relaunched process's environment (and removed from it first thing there). */
const RELAUNCHED = 'QHCP_RELAUNCHED';

/** What the first process forwards to the second (SIGUSR1 too: it opens the second's inspector). */
const FORWARDED: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGWINCH'];

/** Whether the command line runs the load balancer (`qhcp loadbalancer`, `qhcp lb`, the seed's `qhcp -loadbalancer`). */
export function isLoadBalancerCommand(args: readonly string[]): boolean {
  return ['loadbalancer', 'lb', '-loadbalancer', '--loadbalancer'].includes(args[0] ?? '');
}

/** A V8/Node flag's name as written (`--max_semi_space_size=4` -> `--max-semi-space-size`). */
function flagName(arg: string): string {
  return arg.split('=')[0]!.replaceAll('_', '-');
}

/** `flags` not already on `execArgv` (by name: a value given there wins). */
export function missingFlags(flags: readonly string[], execArgv: readonly string[] = process.execArgv): string[] {
  const given = new Set(execArgv.map(flagName));
  return flags.filter((f) => !given.has(flagName(f)));
}

/**
 * Whether this process (not itself relaunched: adoptRelaunch) should start Node again with
 * `flags` for `args`: the load balancer's command, flags missing, and not a request for help
 * (printed as is).
 */
export function wantsRelaunch(args: readonly string[], flags: readonly string[] = LB_NODE_FLAGS): boolean {
  if (!isLoadBalancerCommand(args) || args.includes('--help') || args.includes('-h')) return false;
  return missingFlags(flags).length > 0;
}

/**
 * Whether this process is the relaunched one; if so, first thing: forget the marker (what it
 * starts starts fresh) and stop as on SIGTERM if the first process goes away (its IPC channel closes).
 */
export function adoptRelaunch(): boolean {
  if (process.env[RELAUNCHED] !== '1') return false;
  delete process.env[RELAUNCHED];
  if (process.channel) {
    process.once('disconnect', () => process.kill(process.pid, 'SIGTERM'));
    // The channel only watches the first process: it must not keep this one alive (after the
    // tick in which Node refs it for the listener).
    process.nextTick(() => process.channel?.unref());
  }
  return true;
}

/**
 * Starts this script again under Node with `flags` added, and never returns: the process is
 * replaced (Node >= 22.15), or it waits for the second one and ends as it ended.
 */
export function relaunch(args: readonly string[], flags: readonly string[] = LB_NODE_FLAGS): Promise<never> {
  const argv = [...process.execArgv, ...missingFlags(flags), process.argv[1]!, ...args];
  const env = { ...process.env, [RELAUNCHED]: '1' };
  const execve = (process as unknown as { execve?: (file: string, args: string[], env: NodeJS.ProcessEnv) => never }).execve;
  if (typeof execve === 'function') execve.call(process, process.execPath, [process.execPath, ...argv], env);
  return new Promise<never>(() => {
    const child = spawn(process.execPath, argv, {
      stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
      env,
      // Its own process group: a terminal's Ctrl-C reaches this process only, which passes it on
      // once (a second SIGINT makes the load balancer exit at once, skipping its TERMINATEs).
      detached: process.platform !== 'win32',
    });
    const forward = (sig: NodeJS.Signals) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    };
    for (const sig of FORWARDED) process.on(sig, forward);
    // Job control: a terminal's Ctrl-Z stops both (SIGSTOP itself cannot be caught, so `kill
    // -STOP` on this pid stops this process only: docs/operations.md), `fg` / SIGCONT resumes both.
    const suspend = () => {
      forward('SIGSTOP');
      process.kill(process.pid, 'SIGSTOP');
    };
    const resume = () => forward('SIGCONT');
    process.on('SIGTSTP', suspend);
    process.on('SIGCONT', resume);
    child.once('error', (e) => {
      process.stderr.write(`qhcp: cannot start the load balancer's process (${process.execPath}): ${e.message}\n`);
      process.exit(1);
    });
    child.once('exit', (code, signal) => {
      if (signal) {
        // Die of the same signal, so a shell or supervisor sees what it would have seen.
        for (const sig of FORWARDED) process.off(sig, forward);
        process.off('SIGTSTP', suspend);
        process.off('SIGCONT', resume);
        process.kill(process.pid, signal);
        // A signal whose default is not to end a process (SIGWINCH, ...): the code a shell reports.
        setTimeout(() => process.exit(128 + (constants.signals[signal] ?? 0)), 100);
      } else process.exit(code ?? 1);
    });
  });
}

