/**
 * `qhcp drain [--reason ...]`, `qhcp maint [--reason ...]`, `qhcp ready`, `qhcp weight N` and
 * `qhcp health`: run on a backend's host, they talk to the local agent over its control socket
 * (core/control/socket.ts); the agent pushes the change to every connected load balancer at once.
 * The socket is found as the agent finds it: `--socket`, else `controlSocket` in the config
 * file, else the default path for `--server-port` (or the config's `serverPort`, else 4243).
 */
import type { Command } from 'commander';
import { LocalError } from '../errors.ts';
import { controlRequest, defaultControlSocket, type ControlAnswer, type ControlRequest } from './socket.ts';
import { sanitize } from '../util/sanitize.ts';
import { parsePorts, waitForNoConnections } from './connections.ts';

interface ControlOpts {
  socket?: string;
  /** drain/maint: wait until no TCP connection to these local ports is left. */
  waitPort?: number[];
  /** seconds, with waitPort (default 60). */
  waitTimeout?: number;
  config?: string;
  serverPort?: number;
  json?: boolean;
  timeout?: number;
}

/** The control socket path a command talks to. @throws ConfigError / LocalError */
export async function resolveSocket(o: ControlOpts): Promise<string> {
  if (o.socket) return o.socket;
  // The config loader (cosmiconfig, ajv) only when a control command runs, not at every CLI start.
  const { findConfigFile, buildConfig } = await import('../config/config.ts');
  const { data, file } = await findConfigFile({ ...(o.config ? { file: o.config } : {}) });
  const { config } = buildConfig(data, file, o.serverPort !== undefined ? { serverPort: o.serverPort } : {});
  if (config.controlSocket === false) throw new LocalError('QHCP_ERR_CONTROL', 'the configuration turns the control socket off (controlSocket: false)');
  return config.controlSocket ?? defaultControlSocket(config.serverPort);
}

/** One line for people: `admin DRAIN (deploy 1.4), weight 100, verdict SERVING; pushed to 2 load balancers`. */
export function describeAnswer(a: Extract<ControlAnswer, { ok: true }>, withChecks: boolean): string {
  const h = a.health;
  const lines = [
    `verdict ${h.verdict}${h.reason ? ` (${sanitize(h.reason)})` : ''}, admin ${h.admin}${a.operator.reason ? ` (${sanitize(a.operator.reason)})` : ''}, weight ${h.weight}; pushed to ${a.pushed} load balancer${a.pushed === 1 ? '' : 's'}`,
  ];
  if (h.services) for (const [name, s] of Object.entries(h.services)) lines.push(`  service ${name}: ${s.verdict}${s.reason ? ` (${sanitize(s.reason)})` : ''}`);
  if (withChecks) {
    for (const c of a.checks) lines.push(`  check ${c.service ? `${c.service}/` : ''}${c.name} (${c.type}): ${c.status ?? 'not run yet'}${c.output ? ` - ${sanitize(c.output)}` : ''}`);
  }
  return lines.join('\n');
}

async function run(o: ControlOpts, req: ControlRequest): Promise<void> {
  const path = await resolveSocket(o);
  const a = await controlRequest(path, req, (o.timeout ?? 5) * 1000);
  if (!a.ok) {
    process.stderr.write(`qhcp: the agent refused: ${sanitize(a.error)}\n`);
    process.exitCode = 1;
    return;
  }
  if (!o.waitPort) {
    process.stdout.write((o.json ? JSON.stringify(a) : describeAnswer(a, req.cmd === 'health')) + '\n');
    return;
  }
  // Drained at the load balancers; now the connections already open must finish.
  if (!o.json) process.stdout.write(describeAnswer(a, false) + '\n');
  const where = o.waitPort.map((p) => `:${p}`).join(', ');
  const timeoutS = o.waitTimeout ?? 60;
  const w = await waitForNoConnections(o.waitPort, timeoutS * 1000, (left) => {
    if (!o.json && left > 0) process.stdout.write(`waiting: ${left} connection${left === 1 ? '' : 's'} to ${where}\n`);
  });
  if (o.json) process.stdout.write(JSON.stringify({ ...a, wait: w }) + '\n');
  else if (w.left === 0) process.stdout.write(`no connection left to ${where} after ${(w.waitedMs / 1000).toFixed(1)} s\n`);
  if (w.left > 0) {
    process.stderr.write(`qhcp: ${w.left} connection${w.left === 1 ? '' : 's'} to ${where} still open after ${timeoutS} s\n`);
    process.exitCode = EXIT_WAIT_TIMEOUT;
  }
}

/** `--wait-port` gave up with connections still open (the drain itself took effect). */
export const EXIT_WAIT_TIMEOUT = 3;

/** Adds the control subcommands to the program. `num` parses numeric flags as the rest of the CLI does. */
export function addControlCommands(program: Command, num: (flag: string, kind: 'int' | 'number') => (v: string) => number): void {
  const common = (c: Command) =>
    c
      .option('--socket <path>', "the agent's control socket (default: controlSocket from the config, else the default path for the port)")
      .option('--server-port <port>', 'the agent\'s UDP port, to find its default control socket (default: serverPort from the config, else 4243)', num('--server-port', 'int'))
      .option('--config <file>', 'configuration file the agent runs with')
      .option('--json', 'print the agent\'s answer as JSON')
      .option('--timeout <seconds>', 'give up after (default: 5)', num('--timeout', 'number'));
  const waiting = (c: Command) =>
    c
      .option('--wait-port <ports>', 'then wait until no established TCP connection to these local ports (e.g. 8080,8443) is left on this host (Linux)', parsePorts)
      .option('--wait-timeout <seconds>', 'with --wait-port: give up after (default: 60; exit 3 if connections are left)', (v: string) => {
        const n = num('--wait-timeout', 'number')(v);
        if (n < 0 || n > 86400) throw new LocalError('QHCP_ERR_CLI_USAGE', `--wait-timeout: must be 0-86400 seconds, got ${v}`);
        return n;
      });
  waiting(common(program.command('drain').description('tell the local agent to drain: load balancers stop sending new work, connections stay')))
    .option('--reason <text>', 'why (shown at the load balancers)')
    .addHelpText('after', '\nExample (a deploy script):\n  qhcp drain --reason "deploy 1.4" --wait-port 8080 --wait-timeout 120 && ./deploy.sh && qhcp ready')
    .action(async (o: ControlOpts & { reason?: string }) => run(o, { cmd: 'drain', ...(o.reason ? { reason: o.reason } : {}) }));
  waiting(common(program.command('maint').description('put the local agent in maintenance: out of rotation until `qhcp ready`')))
    .option('--reason <text>', 'why (shown at the load balancers)')
    .action(async (o: ControlOpts & { reason?: string }) => run(o, { cmd: 'maint', ...(o.reason ? { reason: o.reason } : {}) }));
  common(program.command('ready').description('return the local agent to service (after drain or maint)')).action(async (o: ControlOpts) => run(o, { cmd: 'ready' }));
  common(program.command('weight').description('set the weight the local agent reports, 0-256 (100 = normal)'))
    .argument('<n>', 'the weight, an integer from 0 to 256', (v: string) => {
      const n = num('weight', 'int')(v);
      if (n < 0 || n > 256) throw new LocalError('QHCP_ERR_CLI_USAGE', `weight: must be 0-256, got ${v}`);
      return n;
    })
    .action(async (n: number, o: ControlOpts) => run(o, { cmd: 'weight', weight: n }));
  common(program.command('health').description("show the local agent's verdicts, admin state, weight and checks")).action(async (o: ControlOpts) => run(o, { cmd: 'health' }));
}
