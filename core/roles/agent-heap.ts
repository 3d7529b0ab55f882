/**
 * The V8 setting `qhcp server` makes for itself, first thing at start (core/cli/main.ts): V8's
 * young generation keeps its initial 1 MB semi-spaces instead of growing them to 8 MB each during
 * start-up (module loading, config validation), which an agent never needs again: after start-up
 * it allocates a few KB per check. That is 10-15 MB less RSS (docs/benchmarks.md, "Agent").
 *
 * The cost: a process that allocates fast collects its young generation more often and promotes
 * more of it (more CPU per allocated MB; start-up is measured in docs/benchmarks.md). It is
 * process-wide, so it is the command's choice, never AgentServer's: tests and the benchmark's
 * agent farm host many agents in one process, and the load balancer allocates per check.
 * V8 reads the flag whenever it would grow the young generation, so it works when set at run
 * time, but only before the growth: set after start-up it would keep the 16 MB.
 */
import { setFlagsFromString } from 'node:v8';

/** Whether the command line runs the agent role (`qhcp server ...`, or the seed's `qhcp -server ...`). */
export function isAgentCommand(args: readonly string[]): boolean {
  return args[0] === 'server' || args[0] === '-server' || args[0] === '--server';
}

/** Keeps the young generation at its initial size for the rest of the process's life. */
export function keepYoungGenerationSmall(): void {
  setFlagsFromString('--semi-space-growth-factor=1');
}
