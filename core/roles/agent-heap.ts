/**
 * The V8 settings `qhcp server` makes for itself, first thing at start (core/cli/main.ts), before
 * anything is loaded. An agent answers a few checks a second; it never needs what V8 sizes for a
 * busy process (docs/benchmarks.md, "Agent"):
 *
 * - `--semi-space-growth-factor=1`: the young generation keeps its initial 1 MB semi-spaces
 *   instead of growing them to 8 MB each during start-up (module loading, config validation).
 *   10-15 MB less RSS. V8 reads the flag whenever it would grow the young generation, so it works
 *   when set at run time, but only before the growth.
 * - `--max-opt=1`: no optimizing compiler (TurboFan); code tiers up to Sparkplug, V8's baseline
 *   compiler, and stays there. At a few calls a second an agent's code never gets hot enough to
 *   be optimized anyway (its steady-state profile is all Sparkplug code), but what start-up does
 *   get optimized pulls TurboFan's own machine code (~4 MB of the node binary's pages) and its
 *   compilation memory (~2.5 MB) into the process for good: 6-7 MB less RSS (62 -> 55-56 MB),
 *   CPU the same at 1 and 10 checks a second. The price is paid only by an agent far busier than
 *   health checks make it: at 100 checks a second (10 load balancers every 100 ms) it used 9.7%
 *   of a core instead of 7.2% (docs/benchmarks.md, "Agent").
 *
 * The cost of the first: a process that allocates fast collects its young generation more often
 * and promotes more of it (more CPU per allocated MB). Both settings are process-wide, so they are
 * the command's choice, never AgentServer's: tests and the benchmark's agent farm host many agents
 * in one process, and the load balancer allocates per check and runs hot code.
 */
import { setFlagsFromString } from 'node:v8';

/** Whether the command line runs the agent role (`qhcp server ...`, or the seed's `qhcp -server ...`). */
export function isAgentCommand(args: readonly string[]): boolean {
  return args[0] === 'server' || args[0] === '-server' || args[0] === '--server';
}

/** The agent's V8 settings (above), for the rest of the process's life. */
export function agentV8Flags(): void {
  setFlagsFromString('--semi-space-growth-factor=1');
  setFlagsFromString('--max-opt=1');
}
