/**
 * `npm start` / `qhcp demo`: three agents and a load balancer on loopback, each a real `qhcp`
 * process started with the seed's flags and in-memory self-signed certificates. Ctrl-C stops
 * the load balancer (TERMINATE to each server) and then the servers (DRAIN), by PID.
 */
import { withTimeout } from '../util/timeout.ts';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { packageInfo } from '../util/package-info.ts';
import { createServer, type Server } from 'node:http';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The same binary that runs this demo (sources in the checkout, dist/ in the package). */
const BIN = fileURLToPath(new URL('bin/qhcp.js', packageInfo().root));

/**
 * `--tcp-proxy [port]`: three small HTTP services in this process (free loopback ports), each
 * answering `service N`, one per agent, and the load balancer runs the `tcp-proxy` plugin on
 * `port` with a targets map from each agent to its service. Returns the extra LB arguments.
 */
async function tcpProxySetup(agents: number[], port: number, cleanups: Array<() => void>): Promise<string[]> {
  const targets: Record<string, string> = {};
  for (let i = 0; i < agents.length; i++) {
    const name = `service ${i + 1}`;
    const server: Server = createServer((_req, res) => res.end(`${name}\n`));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => server.close());
    targets[`127.0.0.1:${agents[i]}`] = `127.0.0.1:${(server.address() as { port: number }).port}`;
  }
  const dir = mkdtempSync(join(tmpdir(), 'qhcp-demo-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'qhcp.config.json');
  writeFileSync(file, JSON.stringify({ plugins: [['tcp-proxy', { host: '127.0.0.1', port, targets }]] }, null, 2));
  return ['--config', file];
}

/**
 * Service checks: each agent fronts a small HTTP service in this process (answering 503 while
 * `broken-<port>` exists in the demo directory) through an `http` check named `web`, and a
 * maintenance `file` check (`maint-<port>`). Returns each agent's extra arguments.
 */
async function serviceSetup(agents: number[], cleanups: Array<() => void>): Promise<{ dir: string; args: Map<number, string[]> }> {
  const dir = mkdtempSync(join(tmpdir(), 'qhcp-demo-services-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const args = new Map<number, string[]>();
  for (const p of agents) {
    const web: Server = createServer((_req, res) => {
      const broken = existsSync(join(dir, `broken-${p}`));
      res.statusCode = broken ? 503 : 200;
      res.end(broken ? 'broken\n' : `web behind agent ${p}\n`);
    });
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => web.close());
    const url = `http://127.0.0.1:${(web.address() as { port: number }).port}/`;
    const file = join(dir, `agent-${p}.json`);
    writeFileSync(
      file,
      JSON.stringify({ services: { web: [{ type: 'http', url, interval: 1, timeout: 0.5, rise: 1, fall: 2 }] }, checks: [{ type: 'file', path: `maint-${p}`, interval: 1 }] }, null, 2),
    );
    args.set(p, ['-config', file]);
  }
  return { dir, args };
}

export async function runDemo(opts: { checkInterval: number; tcpProxy?: number }): Promise<void> {
  const ports = [4243, 4244, 4245];
  const children: ChildProcess[] = [];
  const cleanups: Array<() => void> = [];
  const proxyArgs = opts.tcpProxy !== undefined ? await tcpProxySetup(ports, opts.tcpProxy, cleanups) : [];
  const start = (args: string[]) => {
    process.stdout.write(`$ qhcp ${args.join(' ')}\n`);
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'inherit', 'inherit'] });
    children.push(child);
    return child;
  };
  const services = await serviceSetup(ports, cleanups);
  for (const p of ports) start(['-server', '-server-ip', '127.0.0.1', '-server-port', String(p), ...services.args.get(p)!]);
  await new Promise((r) => setTimeout(r, 1500));
  const lb = start([
    '-loadbalancer',
    '-servers', ports.map((p) => `127.0.0.1:${p}`).join(','),
    '-loadbalancer-port', '4242',
    '-max-fail-attempts', '3',
    '-check-interval', String(opts.checkInterval),
    '-reconnect-interval', String(opts.checkInterval * 2),
    ...proxyArgs,
  ]);
  process.stdout.write('demo running: open http://127.0.0.1:4280/ for the live status page (metrics at http://127.0.0.1:4280/metrics);\n');
  process.stdout.write('try `npx qhcp status` or `npx qhcp pick --count 6` in another terminal; Ctrl-C stops everything\n');
  const d = services.dir;
  process.stdout.write(
    `service checks: each agent fronts a web service (check "web", http) and a maintenance file; try\n` +
      `  npx qhcp health --server-port 4243          the agent's verdicts and checks\n` +
      `  touch ${join(d, 'broken-4244')}   web answers 503: 4244 goes DOWN with the reason (rm it: UP)\n` +
      `  touch ${join(d, 'maint-4245')}    4245 goes MAINT (rm it: UP)\n` +
      `  npx qhcp drain --server-port 4243 --reason deploy; npx qhcp ready --server-port 4243\n`,
  );
  if (opts.tcpProxy !== undefined) process.stdout.write(`tcp-proxy on 127.0.0.1:${opts.tcpProxy}: try \`curl -s 127.0.0.1:${opts.tcpProxy}\` a few times (service 1, 2, 3 in turn)\n`);
  let stopping = false;
  const stopAll = async () => {
    if (stopping) return;
    stopping = true;
    const exited = (c: ChildProcess) => (c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : new Promise<void>((r) => c.once('exit', () => r())));
    lb.kill('SIGTERM');
    await withTimeout(exited(lb), 5000, { value: undefined });
    for (const c of children) if (c !== lb) c.kill('SIGTERM');
    await withTimeout(Promise.all(children.map(exited)), 8000, { value: undefined });
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const f of cleanups) f();
    process.exit(0);
  };
  process.on('SIGINT', () => void stopAll());
  process.on('SIGTERM', () => void stopAll());
  lb.on('exit', (code) => {
    if (!stopping) {
      process.stderr.write(`load balancer exited (${code}); stopping the demo\n`);
      void stopAll();
    }
  });
  await new Promise(() => {});
}
