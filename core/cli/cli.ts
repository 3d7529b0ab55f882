/**
 * The `qhcp` command line. Accepts the Go prototype's single-dash form exactly as the seed
 * wrote it (`qhcp -loadbalancer -servers "a:4243,b:4244" -check-interval 10 ...`) and the
 * Node form (`qhcp loadbalancer --servers ...`). Usage and configuration problems print one
 * line `qhcp: <problem>` and exit 2; no stack traces.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { Command, CommanderError, Option } from 'commander';
import { buildConfig, findConfigFile, CONFIG_SCHEMA, DEFAULT_LOADBALANCER_PORT, checkTimeoutOf, type QhcpConfig, type LoadedConfig } from '../config/config.ts';
import { ConfigError, LocalError, PluginError, QhcpError, PeerError, ProtocolError, errorText } from '../errors.ts';
import { parseAddress } from '../util/address.ts';
import { createLogger, type Level } from '../util/log.ts';
import { render, resolveFormat, statusFrame } from './status.ts';
import { readPem } from '../transport/tls.ts';
import { sanitize, safeJson } from '../util/sanitize.ts';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

/** Exit codes: 0 ok, 1 runtime failure, 2 usage/configuration. */
export const EXIT_USAGE = 2;

type Props = typeof CONFIG_SCHEMA.properties;
const dflt = (k: keyof Props) => {
  const d = (CONFIG_SCHEMA.properties[k] as { default?: unknown }).default;
  return d === undefined ? '' : ` (default: ${Array.isArray(d) ? 'none' : d})`;
};

function num(flag: string, kind: 'int' | 'number') {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n) || (kind === 'int' && !Number.isInteger(n))) {
      throw new LocalError('QHCP_ERR_CLI_USAGE', `${flag}: expected ${kind === 'int' ? 'an integer' : 'a number'}, got "${v}"`);
    }
    return n;
  };
}

function portArg(flag: string) {
  return (v: string): number => {
    const n = num(flag, 'int')(v);
    if (n < 0 || n > 65535) throw new LocalError('QHCP_ERR_CLI_USAGE', `${flag}: port must be 0-65535, got ${v}`);
    return n;
  };
}

/** The listen address flags take an IP address, as the seed's -server-ip does. */
function ipArg(flag: string) {
  return (v: string): string => {
    if (!isIP(v.trim())) throw new LocalError('QHCP_ERR_CLI_USAGE', `${flag}: expected an IP address, got "${v}"`);
    return v.trim();
  };
}

/**
 * Rewrites the Go-style single-dash flags to the double-dash form commander parses:
 * `-server-port 4243` -> `--server-port 4243`; a leading `-server` / `-loadbalancer` selects
 * the role. Values that merely start with a dash (like `-3`) are left alone.
 */
export function normalizeArgv(args: string[]): string[] {
  const out = args.map((a) => (/^-[A-Za-z][A-Za-z0-9-]+(=.*)?$/.test(a) ? `-${a}` : a));
  const roleAt = out.findIndex((a) => a === '--server' || a === '--loadbalancer');
  if (roleAt >= 0 && !out.slice(0, roleAt).some((a) => !a.startsWith('-'))) {
    const role = out[roleAt]!.slice(2);
    out.splice(roleAt, 1);
    out.unshift(role);
  }
  return out;
}

interface CommonOpts {
  config?: string;
  node?: string;
  logLevel?: Level;
  pluginTimeout?: number;
  maxFrameBytes?: number;
  idleTimeout?: number;
  helloTimeout?: number;
}

function commonOptions(cmd: Command): Command {
  return cmd
    .option('--config <file>', 'configuration file (default: qhcp.config.{ts,js,json}, .qhcprc, package.json#qhcp in the working directory)')
    .option('--node <name>', 'this node\'s name in HELLO/ACK (default: hostname:port)')
    .addOption(new Option('--log-level <level>', `log level${dflt('logLevel')}`).choices(['debug', 'info', 'warn', 'error', 'silent']))
    .option('--plugin-timeout <seconds>', `time a plugin hook may take${dflt('pluginTimeout')}`, num('--plugin-timeout', 'number'))
    .option('--hello-timeout <seconds>', `close connections that send no HELLO in time${dflt('helloTimeout')}`, num('--hello-timeout', 'number'))
    .option('--idle-timeout <seconds>', `QUIC idle timeout${dflt('idleTimeout')}`, num('--idle-timeout', 'number'))
    .option('--max-frame-bytes <bytes>', `largest frame payload accepted${dflt('maxFrameBytes')}`, num('--max-frame-bytes', 'int'));
}

function serverOptions(cmd: Command): Command {
  return cmd
    .option('--server-ip <ip>', 'IP address to listen on (default: "0.0.0.0")', ipArg('--server-ip'))
    .option('--server-port <port>', `UDP port to listen on${dflt('serverPort')}`, portArg('--server-port'))
    .option('--key-file <file>', 'TLS private key, PEM (optional; with --cert-file)')
    .option('--cert-file <file>', 'TLS certificate, PEM (optional; without both a self-signed one is made in memory)')
    .option('--drain-grace <seconds>', `on SIGTERM, time load balancers get after DRAIN${dflt('drainGrace')}`, num('--drain-grace', 'number'))
    .option('--sample-interval <seconds>', `how often metrics are sampled in the background${dflt('sampleInterval')}`, num('--sample-interval', 'number'))
    .option('--max-connections <n>', `most concurrent connections${dflt('maxConnections')}`, num('--max-connections', 'int'))
    .option('--max-pending-handshakes <n>', `most handshakes in progress, and most connections still without HELLO${dflt('maxPendingHandshakes')}`, num('--max-pending-handshakes', 'int'))
    .option('--max-connections-per-source <n>', `most concurrent connections from one IP address${dflt('maxConnectionsPerSource')}`, num('--max-connections-per-source', 'int'))
    .option('--session-idle-timeout <seconds>', `close sessions that ask nothing for this long after HELLO${dflt('sessionIdleTimeout')}`, num('--session-idle-timeout', 'number'));
}

function loadbalancerOptions(cmd: Command, withCert = true): Command {
  cmd = cmd
    .option('--servers <list>', 'comma-separated host:port list of servers (a bare host uses port 4243)')
    .option('--loadbalancer-port <port>', `UDP port for STATUS/PICK queries${dflt('loadbalancerPort')}`, portArg('--loadbalancer-port'))
    .option('--loadbalancer-host <ip>', 'IP address for the query port (default: "0.0.0.0")', ipArg('--loadbalancer-host'))
    .option('--max-fail-attempts <n>', `consecutive failed checks before DOWN${dflt('maxFailAttempts')}`, num('--max-fail-attempts', 'int'))
    .option('--rise-attempts <n>', `consecutive good checks before a DOWN server is UP again${dflt('riseAttempts')}`, num('--rise-attempts', 'int'))
    .option('--check-interval <seconds>', `seconds between checks and status prints${dflt('checkInterval')}`, num('--check-interval', 'number'))
    .option('--check-timeout <seconds>', 'check timeout (default: half the interval, at most 5)', num('--check-timeout', 'number'))
    .option('--reconnect-interval <seconds>', `seconds between reconnects to DOWN servers${dflt('reconnectInterval')}`, num('--reconnect-interval', 'number'))
    .option('--report-interval <seconds>', `push mode: servers send a report every this many seconds, each one a check; 0 = poll with HEALTH_REQUEST${dflt('reportInterval')}`, num('--report-interval', 'number'))
    .option('--jitter <fraction>', `random spread of check times, 0-0.5${dflt('jitter')}`, num('--jitter', 'number'))
    .option('--server-name <name>', 'name server certificates must carry (default: the address host)')
    .addOption(new Option('--status <format>', `status output (auto: table on a terminal, lines otherwise)${dflt('status')}`).choices(['auto', 'table', 'lines', 'json', 'none']));
  return withCert ? cmd.option('--cert-file <file>', 'CA or server certificate (PEM) to verify servers with (optional; without it servers are not verified)') : cmd;
}

/** Maps parsed flags to config keys (only those given: flags override the file). */
function flagsToConfig(o: Record<string, unknown>, role: 'server' | 'loadbalancer'): Partial<QhcpConfig> {
  const c: Record<string, unknown> = {};
  const copy = (from: string, to: keyof QhcpConfig = from as keyof QhcpConfig) => {
    if (o[from] !== undefined) c[to] = o[from];
  };
  for (const k of ['node', 'logLevel', 'pluginTimeout', 'helloTimeout', 'idleTimeout', 'maxFrameBytes', 'serverIp', 'serverPort', 'keyFile', 'drainGrace', 'sampleInterval', 'maxConnections', 'maxPendingHandshakes', 'maxConnectionsPerSource', 'sessionIdleTimeout', 'loadbalancerPort', 'loadbalancerHost', 'maxFailAttempts', 'riseAttempts', 'checkInterval', 'checkTimeout', 'reconnectInterval', 'reportInterval', 'jitter', 'serverName'])
    copy(k);
  copy('status');
  // The seed's load balancer -cert-file is the certificate to verify servers with.
  if (o.certFile !== undefined) c[role === 'loadbalancer' ? 'caFile' : 'certFile'] = o.certFile;
  if (typeof o.servers === 'string') {
    const list = o.servers.split(',').map((s) => s.trim()).filter(Boolean);
    if (list.length === 0) throw new LocalError('QHCP_ERR_CLI_USAGE', '--servers: the list is empty');
    c.servers = list;
  }
  return c as Partial<QhcpConfig>;
}

async function loadConfig(o: CommonOpts & Record<string, unknown>, role: 'server' | 'loadbalancer'): Promise<LoadedConfig> {
  const { data, file } = await findConfigFile({ ...(o.config ? { file: o.config } : {}) });
  try {
    return buildConfig(data, file, flagsToConfig(o, role));
  } catch (e) {
    // One run lists every problem: the plugins' own option errors join the core's.
    const raw = (data as { plugins?: unknown } | undefined)?.plugins;
    if (!(e instanceof ConfigError) || !Array.isArray(raw)) throw e;
    const { resolvePlugins } = await import('../plugin/loader.ts');
    const more = await resolvePlugins({ plugins: raw, defaults: false }, role, file).then(
      () => [],
      (p: unknown) => (p instanceof ConfigError ? p.problems : []),
    );
    const known = (p: string) => {
      const at = /^plugins\[\d+\]/.exec(p)?.[0];
      return at !== undefined && e.problems.some((q) => q === at || /^[:.[]/.test(q.slice(at.length)) && q.startsWith(at));
    };
    throw new ConfigError([...e.problems, ...more.filter((p) => !known(p))]);
  }
}

/** Runs until SIGINT/SIGTERM, then calls `stop` once and exits 0. */
function untilSignal(stop: () => Promise<void>, logger: { info(m: string, f?: Record<string, unknown>): void }): void {
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopping) {
      process.exit(130);
    }
    stopping = true;
    logger.info('signal received, stopping', { signal: sig });
    const hard = setTimeout(() => process.exit(1), 15_000);
    hard.unref();
    stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

async function runServer(o: CommonOpts & Record<string, unknown>): Promise<void> {
  const { config, file } = await loadConfig(o, 'server');
  const logger = createLogger({ level: config.logLevel, name: 'server' });
  const { AgentServer } = await import('../roles/agent.ts');
  const server = new AgentServer(config, logger, file);
  await server.loadPlugins();
  await server.start();
  untilSignal(() => server.stop(), logger);
}

async function runLoadBalancer(o: CommonOpts & Record<string, unknown>): Promise<void> {
  const { config, file } = await loadConfig(o, 'loadbalancer');
  if (config.servers.length === 0) throw new LocalError('QHCP_ERR_CLI_USAGE', 'no servers: give -servers "host:port,..." or `servers` in the config file');
  const logger = createLogger({ level: config.logLevel, name: 'lb' });
  const { LoadBalancer } = await import('../roles/loadbalancer.ts');
  const lb = new LoadBalancer(config, logger, file);
  await lb.loadPlugins();
  const format = resolveFormat(config.status, process.stdout.isTTY === true);
  if (format !== 'none') lb.onStatus = (backends) => process.stdout.write(statusFrame(format, backends.map((b) => b.status())));
  await lb.start();
  untilSignal(() => lb.stop(), logger);
}

interface QueryOpts {
  address: string;
  json?: boolean;
  certFile?: string;
  serverName?: string;
  timeout?: number;
}

async function openQuery(o: QueryOpts) {
  const a = parseAddress(o.address, DEFAULT_LOADBALANCER_PORT);
  const { QueryClient } = await import('../client/query.ts');
  return QueryClient.open({
    host: a.host,
    port: a.port,
    timeoutMs: (o.timeout ?? 5) * 1000,
    ...(o.certFile ? { ca: readPem(o.certFile, 'certificate') } : {}),
    ...(o.serverName ? { serverName: o.serverName } : {}),
  });
}

function queryOptions(cmd: Command): Command {
  return cmd
    .option('--address <host:port>', 'load balancer query address', '127.0.0.1:4242')
    .option('--json', 'machine-readable JSON output')
    .option('--cert-file <file>', 'CA/certificate to verify the load balancer with')
    .option('--server-name <name>', 'name its certificate must carry')
    .option('--timeout <seconds>', 'give up after (default: 5)', num('--timeout', 'number'));
}

export function buildProgram(): Command {
  const program = new Command('qhcp')
    .description('Quick Health Check Protocol: health checks and load balancing over QUIC')
    .version(pkg.version, '-v, --version')
    .showSuggestionAfterError(true)
    .addHelpText(
      'after',
      `
Seed (Go prototype) form, single dash:
  qhcp -server -server-ip 0.0.0.0 -server-port 4243 -key-file key.pem -cert-file cert.pem
  qhcp -loadbalancer -servers "host1:4243,host2:4244" -loadbalancer-port 4242 \\
       -max-fail-attempts 3 -check-interval 10 -reconnect-interval 30 -cert-file ca.pem`,
    );

  serverOptions(commonOptions(program.command('server').description('run a backend agent that reports live metrics over QHCP')))
    .addHelpText('after', '\nExample:\n  qhcp server --server-ip 127.0.0.1 --server-port 4243 --key-file key.pem --cert-file cert.pem\n  qhcp -server -server-ip 0.0.0.0 -server-port 4243 -key-file key.pem -cert-file cert.pem   (seed form)')
    .action(async (o) => runServer(o));

  loadbalancerOptions(commonOptions(program.command('loadbalancer').alias('lb').description('check servers over QHCP, mark them UP/DOWN, answer STATUS and PICK')))
    .addHelpText('after', '\nExample:\n  qhcp loadbalancer --servers "10.0.0.1:4243,10.0.0.2" --check-interval 10 --max-fail-attempts 3 --cert-file ca.pem\n  qhcp -loadbalancer -servers "host1:4243,host2:4244" -loadbalancer-port 4242 -max-fail-attempts 3 -check-interval 10 -reconnect-interval 30 -cert-file ca.pem   (seed form)')
    .action(async (o) => runLoadBalancer(o));

  queryOptions(program.command('status').description("print a load balancer's view of its servers"))
    .addHelpText('after', '\nExample:\n  qhcp status --address 127.0.0.1:4242 --json')
    .action(async (o: QueryOpts) => {
      const q = await openQuery(o);
      try {
        const st = await q.status();
        process.stdout.write((o.json ? safeJson(st, 2) : render('table', st.servers, Date.now())) + '\n');
      } finally {
        await q.close();
      }
    });

  queryOptions(program.command('pick').description('ask a load balancer which server to use'))
    .option('--key <key>', 'affinity key passed to the balancer')
    .option('--count <n>', 'ask n times over one connection (default: 1)', num('--count', 'int'))
    .addHelpText('after', '\nExample:\n  qhcp pick --address 127.0.0.1:4242 --count 6 --json')
    .action(async (o: QueryOpts & { key?: string; count?: number }) => {
      const q = await openQuery(o);
      let none = false;
      try {
        const n = Math.max(1, Math.min(o.count ?? 1, 100_000));
        for (let i = 0; i < n; i++) {
          const r = await q.pick(o.key);
          if (!r.server) none = true;
          process.stdout.write((o.json ? safeJson(r) : r.server === null ? `none: ${sanitize(r.reason ?? '', 1024)}` : sanitize(r.server, 300)) + '\n');
        }
      } finally {
        await q.close();
      }
      if (none) process.exitCode = 3;
    });

  const config = program.command('config').description('show the merged configuration and where each value came from');
  loadbalancerOptions(serverOptions(commonOptions(config)), false)
    .addOption(new Option('--role <role>', 'role whose flags apply').choices(['server', 'loadbalancer']).default('loadbalancer'))
    .option('--print', 'print the merged configuration (the default)')
    .option('--json', 'as JSON')
    .action(async (o: CommonOpts & Record<string, unknown> & { role: 'server' | 'loadbalancer'; json?: boolean }) => {
      const { config: c, sources, file } = await loadConfig(o, o.role);
      const { resolvePlugins } = await import('../plugin/loader.ts');
      const plugins = (await resolvePlugins(c, o.role, file)).map((p) => p.name);
      if (o.json) {
        process.stdout.write(JSON.stringify({ file: file ?? null, config: { ...c, plugins: undefined }, plugins, sources }, null, 2) + '\n');
        return;
      }
      process.stdout.write(`# configuration for role ${o.role}; file: ${file ?? '(none found)'}\n`);
      const w = Math.max(...Object.keys(CONFIG_SCHEMA.properties).map((k) => k.length)) + 1;
      for (const k of Object.keys(CONFIG_SCHEMA.properties)) {
        if (k === 'plugins') continue;
        const v = (c as unknown as Record<string, unknown>)[k];
        if (v === undefined && k !== 'checkTimeout') continue;
        const shown = k === 'checkTimeout' && v === undefined ? `${checkTimeoutOf(c)} (derived)` : JSON.stringify(v);
        process.stdout.write(`${k.padEnd(w)} ${String(shown).padEnd(30)} ${sources[k] ?? (k === 'checkTimeout' ? 'default' : '')}\n`);
      }
      process.stdout.write(`${'plugins'.padEnd(w)} ${plugins.join(', ')}  (${sources.plugins ?? 'default'})\n`);
    });

  program
    .command('demo')
    .description('three servers and a load balancer on loopback, self-signed certificates; Ctrl-C stops all')
    .option('--check-interval <seconds>', 'check interval for the demo (default: 2)', num('--check-interval', 'number'))
    .action(async (o: { checkInterval?: number }) => {
      const { runDemo } = await import('./demo.ts');
      await runDemo({ checkInterval: o.checkInterval ?? 2 });
    });

  return program;
}

/** Prints a usage/config error as one line (or one line per config problem) and exits 2. */
function fail(e: unknown): never {
  if (e instanceof ConfigError) {
    // One problem (the usual bad flag value) fits on one line; several are listed below.
    process.stderr.write(e.problems.length === 1 ? `qhcp: invalid configuration: ${e.problems[0]}\n` : `qhcp: invalid configuration:\n${e.problems.map((p) => `  ${p}`).join('\n')}\n`);
    process.exit(EXIT_USAGE);
  }
  if (e instanceof LocalError && e.code !== 'QHCP_ERR_CONNECT' && !(e instanceof PluginError)) {
    process.stderr.write(`qhcp: ${e.message}\n`);
    process.exit(EXIT_USAGE);
  }
  if (e instanceof QhcpError || e instanceof PeerError || e instanceof ProtocolError) {
    // A peer's ERROR reason: escaped before it reaches the terminal.
    process.stderr.write(`qhcp: ${sanitize(e instanceof PeerError ? e.toString() : e.message, 2000)}\n`);
    process.exit(1);
  }
  process.stderr.write(`qhcp: unexpected error: ${errorText(e)}\n`);
  if (process.env.QHCP_DEBUG) console.error(e);
  process.exit(1);
}

export async function main(argv: string[] = process.argv.slice(2)): Promise<void> {
  const program = buildProgram();
  const all = [program, ...program.commands];
  for (const c of all) {
    c.exitOverride();
    // One line per usage error: commander's "(Did you mean ...?)" goes on the same line.
    c.configureOutput({ writeErr: (s) => process.stderr.write(s.startsWith('error: ') ? `qhcp: ${s.slice(7).replace(/\n\(Did you mean/, ' (did you mean')}` : s) });
  }
  // `qhcp status | head` closes our stdout early: that is the reader's choice, not an error.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => process.exit(e.code === 'EPIPE' ? 0 : 1));
  process.on('unhandledRejection', (e) => {
    process.stderr.write(`qhcp: internal error (bug, please report): ${errorText(e)}\n`);
    if (process.env.QHCP_DEBUG) console.error(e);
  });
  if (argv.length === 0) {
    // No role given: that is a usage error, not a request for help.
    program.outputHelp({ error: true });
    process.exit(EXIT_USAGE);
  }
  try {
    await program.parseAsync(normalizeArgv(argv), { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') process.exit(0);
      if (e.code === 'commander.executeSubCommandAsync') process.exit(e.exitCode);
      process.exit(EXIT_USAGE);
    }
    if (e instanceof Error && e.cause instanceof LocalError && e.message === e.cause.message) fail(e.cause);
    fail(e);
  }
}
