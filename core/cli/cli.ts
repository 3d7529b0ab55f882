/**
 * The `qhcp` command line. Accepts the Go prototype's single-dash form exactly as the seed
 * wrote it (`qhcp -loadbalancer -servers "a:4243,b:4244" -check-interval 10 ...`) and the
 * Node form (`qhcp loadbalancer --servers ...`). Usage and configuration problems print one
 * line `qhcp: <problem>` and exit 2; no stack traces.
 */
import { packageInfo } from '../util/package-info.ts';
import { isIP } from 'node:net';
import { Command, CommanderError, Option } from 'commander';
import { optionMeta, CONFIG_SCHEMA, DEFAULT_LOADBALANCER_PORT, checkTimeoutOf, type ConfigKey, type QhcpUserConfig } from '../config/schema.ts';
import type { LoadedConfig } from '../config/config.ts';
import { ConfigError, LocalError, errorText } from '../errors.ts';
import { parseAddress } from '../util/address.ts';
import { createLogger, type Level } from '../util/log.ts';
import { resolveFormat, StatusPrinter } from './status.ts';
import { EXIT_USAGE, fail, queryTarget, readToken, runPick, runStatus, type PickOpts, type QueryOpts, type StatusOpts } from './query.ts';
import type { ServerStatus } from '../protocol/messages.ts';
import { addControlCommands } from '../control/commands.ts';

export { EXIT_USAGE, queryTarget };

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
}

type FlagRole = 'server' | 'loadbalancer';
const CONFIG_KEYS = Object.keys(CONFIG_SCHEMA.properties) as ConfigKey[];

/** A config key's flag: `x-qhcp.flag.name`, else `--` and the key in kebab case. */
export function flagOf(key: ConfigKey): string {
  return optionMeta(key).flag?.name ?? `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

/** The attribute commander stores a flag's value under (`--cert-file` -> `certFile`). */
const attrOf = (flag: string) => flag.slice(2).replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

const ARG: Record<string, string> = { seconds: 'seconds', port: 'port', ip: 'ip', path: 'file', bytes: 'bytes', fraction: 'fraction', list: 'list', name: 'name' };
const ROLE_PREFIX = /^(Load balancer|Server|Both): /;

/** One commander Option for a config key, its help, default text and parser all from the schema. */
function optionFor(key: ConfigKey, flag: string): Option {
  const schema = CONFIG_SCHEMA.properties[key] as { type?: string; enum?: readonly string[]; default?: unknown; description: string };
  const meta = optionMeta(key);
  const arg = meta.flag?.arg ?? (meta.kind ? ARG[meta.kind] : schema.enum ? 'value' : schema.type === 'integer' ? 'n' : 'value');
  const d = schema.default;
  const dflt = meta.defaultText ? ` (default: ${meta.defaultText})` : d === undefined ? ' (optional)' : Array.isArray(d) ? '' : ` (default: ${JSON.stringify(d)})`;
  const help = (meta.flag?.help ?? schema.description.replace(ROLE_PREFIX, '')).replace(/\.$/, '');
  const option = new Option(`${flag} <${arg}>`, `${help}${dflt}`);
  if (schema.enum) return option.choices(schema.enum);
  if (meta.kind === 'ip') return option.argParser(ipArg(flag));
  if (meta.kind === 'port') return option.argParser(portArg(flag));
  if (schema.type === 'integer') return option.argParser(num(flag, 'int'));
  if (schema.type === 'number') return option.argParser(num(flag, 'number'));
  return option;
}

/** Adds the flag of every config key the schema gives to one of `roles` (a shared flag once). */
function configFlags(cmd: Command, roles: FlagRole[]): Command {
  const seen = new Set<string>();
  for (const key of CONFIG_KEYS) {
    const f = optionMeta(key).flag;
    if (!f || !f.roles.some((r) => roles.includes(r))) continue;
    const flag = flagOf(key);
    if (seen.has(flag)) continue;
    seen.add(flag);
    // A flag two roles read into different keys (--cert-file) says which key for which role.
    const shared = CONFIG_KEYS.filter((k) => k !== key && flagOf(k) === flag && optionMeta(k).flag?.roles.some((r) => roles.includes(r)));
    const option = optionFor(key, flag);
    if (shared.length) option.description = [key, ...shared].map((k) => `${optionMeta(k).flag!.roles.join('/')}: ${k}`).join('; ');
    cmd.addOption(option);
  }
  return cmd;
}

function commonOptions(cmd: Command): Command {
  return cmd.option('--config <file>', 'configuration file (default: qhcp.config.{ts,js,json}, .qhcprc, package.json#qhcp in the working directory)');
}

/**
 * Maps parsed flags to config keys (only those given: flags override the file). `role` decides
 * a flag two keys share (--cert-file: certFile for a server, caFile for a load balancer);
 * `qhcp config` has every role's flags and applies them all.
 */
function flagsToConfig(o: Record<string, unknown>, role: FlagRole, roles: FlagRole[] = [role]): QhcpUserConfig {
  const c: Record<string, unknown> = {};
  for (const key of CONFIG_KEYS) {
    const f = optionMeta(key).flag;
    if (!f?.roles.some((r) => roles.includes(r))) continue;
    const sharedWith = CONFIG_KEYS.filter((k) => k !== key && optionMeta(k).flag && flagOf(k) === flagOf(key));
    if (sharedWith.length > 0 && !f.roles.includes(role)) continue;
    const v = o[attrOf(flagOf(key))];
    if (v === undefined) continue;
    if (optionMeta(key).kind === 'list' && typeof v === 'string') {
      const list = v.split(',').map((s) => s.trim()).filter(Boolean);
      if (list.length === 0) throw new LocalError('QHCP_ERR_CLI_USAGE', `${flagOf(key)}: the list is empty`);
      c[key] = list;
    } else c[key] = v;
  }
  return c as QhcpUserConfig;
}

/** The config a role's flags give (for tests and embedding): `--check-interval 2` -> { checkInterval: 2 }. */
export function parseConfigFlags(role: FlagRole, args: string[]): QhcpUserConfig {
  const cmd = configFlags(commonOptions(new Command(role)), [role]).exitOverride();
  cmd.parse(args, { from: 'user' });
  return flagsToConfig(cmd.opts(), role);
}

async function loadConfig(o: CommonOpts & Record<string, unknown>, role: FlagRole, flagRoles: FlagRole[] = [role]): Promise<LoadedConfig> {
  // Loaded only for the commands that need a config (not --version, --help or usage errors).
  const { buildConfig, findConfigFile } = await import('../config/config.ts');
  const { data, file } = await findConfigFile({ ...(o.config ? { file: o.config } : {}) });
  try {
    return buildConfig(data, file, flagsToConfig(o, role, flagRoles));
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

/** Runs until SIGINT/SIGTERM, then calls `stop` once and exits 0; SIGHUP calls `hup` (one at a time) when given. */
function untilSignal(stop: () => Promise<void>, logger: { info(m: string, f?: Record<string, unknown>): void }, hup?: () => Promise<void>): void {
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
  if (hup) {
    let running: Promise<void> | undefined;
    let again = false;
    const onHup = () => {
      if (stopping) return;
      if (running) {
        again = true;
        return;
      }
      running = hup().finally(() => {
        running = undefined;
        if (again) {
          again = false;
          onHup();
        }
      });
    };
    process.on('SIGHUP', onHup);
  }
}

async function runServer(o: CommonOpts & Record<string, unknown>): Promise<void> {
  const { config, file } = await loadConfig(o, 'server');
  const logger = createLogger({ level: config.logLevel, name: 'server' });
  const { AgentServer } = await import('../roles/agent.ts');
  const server = new AgentServer(config, logger, file);
  await server.loadPlugins();
  const { httpAddressOf } = await import('../http/common.ts');
  const { at } = httpAddressOf(config, 'server');
  await server.start();
  if (at) {
    const { AgentHttp } = await import('../http/agent.ts');
    await new AgentHttp(server, at).listen().catch(async (e: unknown) => {
      await server.stop();
      throw e;
    });
  }
  // SIGHUP: read the config file again (flags still win) and apply its checks and services; a
  // config that does not load or validate, or a check that does not build, leaves the running ones.
  const reload = async () => {
    try {
      const next = await loadConfig(o, 'server');
      const { agentReloadSummary } = await import('../roles/agent.ts');
      logger.info(`config reloaded: ${agentReloadSummary(await server.reload(next.config))}`, { file: next.file ?? 'none' });
    } catch (e) {
      const why = e instanceof ConfigError ? e.problems.join('; ') : errorText(e);
      logger.error(`config reload failed, the running configuration stays: ${why}`);
    }
  };
  untilSignal(() => server.stop(), logger, reload);
}

async function runLoadBalancer(o: CommonOpts & Record<string, unknown>): Promise<void> {
  const { config, file } = await loadConfig(o, 'loadbalancer');
  if (config.servers.length === 0) throw new LocalError('QHCP_ERR_CLI_USAGE', 'no servers: give -servers "host:port,..." or `servers` in the config file');
  const logger = createLogger({ level: config.logLevel, name: 'lb' });
  const { LoadBalancer, reloadSummary } = await import('../roles/loadbalancer.ts');
  const lb = new LoadBalancer(config, logger, file);
  await lb.loadPlugins();
  const printFor = (c: typeof config) => {
    const format = resolveFormat(c.status, process.stdout.isTTY === true);
    if (format === 'none') return undefined;
    const printer = new StatusPrinter(format, c.statusSummary * 1000, (text) => process.stdout.write(text));
    return (backends: readonly { status(): ServerStatus }[], change: boolean) => printer.update(backends.map((b) => b.status()), Date.now(), change);
  };
  lb.onStatus = printFor(config);
  // The state file applies before the first check. The HTTP listener (fastify, prom-client:
  // loaded only when it is on) comes up after start, so start-up is not held up; the events
  // in between are kept for it.
  const { httpAddressOf, EarlyEvents } = await import('../http/common.ts');
  const { at, explicit } = httpAddressOf(config, 'loadbalancer');
  const admin = at || config.stateFile ? new (await import('../http/admin.ts')).Admin(lb, logger, config.stateFile) : undefined;
  await admin?.applyStartup();
  const early = at ? new EarlyEvents(lb.hooks) : undefined;
  if (config.httpTokenFile) (await import('../http/token.ts')).readToken(config.httpTokenFile);
  await lb.start();
  const web = at ? new (await import('../http/loadbalancer.ts')).LbHttp(lb, { at, explicit, tokenFile: config.httpTokenFile, ...(admin ? { admin } : {}), ...(early ? { early } : {}) }) : undefined;
  await web?.listen().catch(async (e: unknown) => {
    await lb.stop();
    throw e;
  });
  // SIGHUP: read the config file again (flags still win) and apply it; a config that does not
  // load or validate leaves the running one in place.
  const reload = async () => {
    try {
      const next = await loadConfig(o, 'loadbalancer');
      const r = await lb.reload(next.config);
      if (r.applied.includes('status') || r.applied.includes('statusSummary')) lb.onStatus = printFor(lb.config);
      logger.info(`config reloaded: ${reloadSummary(r)}`, { file: next.file ?? 'none' });
    } catch (e) {
      const why = e instanceof ConfigError ? e.problems.join('; ') : errorText(e);
      logger.error(`config reload failed, the running configuration stays: ${why}`);
    }
  };
  untilSignal(() => lb.stop(), logger, reload);
}

function queryOptions(cmd: Command): Command {
  return cmd
    .option('--address <host:port>', 'load balancer query address (default: loadbalancerHost:loadbalancerPort from the config file when one is found, else "127.0.0.1:4242")')
    .option('--config <file>', 'configuration file to read the address and caFile from (default: qhcp.config.{ts,js,json}, .qhcprc, package.json#qhcp in the working directory)')
    .option('--json', 'machine-readable JSON output')
    .option('--cert-file <file>', 'CA/certificate to verify the load balancer with (default: caFile from the config file; none: not verified)')
    .option('--server-name <name>', 'name its certificate must carry')
    .option('--timeout <seconds>', 'give up after (default: 5)', num('--timeout', 'number'))
    .option('--token-file <file>', 'file holding a token (JWT) for a load balancer that verifies query clients (jwt verifyQueries)');
}

export function buildProgram(): Command {
  const program = new Command('qhcp')
    .description('Quick Health Check Protocol: health checks and load balancing over QUIC')
    .version(packageInfo().version, '-v, --version')
    .showSuggestionAfterError(true)
    .addHelpText(
      'after',
      `
Seed (Go prototype) form, single dash:
  qhcp -server -server-ip 0.0.0.0 -server-port 4243 -key-file key.pem -cert-file cert.pem
  qhcp -loadbalancer -servers "host1:4243,host2:4244" -loadbalancer-port 4242 \\
       -max-fail-attempts 3 -check-interval 10 -reconnect-interval 30 -cert-file ca.pem`,
    );

  configFlags(commonOptions(program.command('server').description('run a backend agent that reports live metrics over QHCP')), ['server'])
    .addHelpText('after', '\nExample:\n  qhcp server --server-ip 127.0.0.1 --server-port 4243 --key-file key.pem --cert-file cert.pem\n  qhcp -server -server-ip 0.0.0.0 -server-port 4243 -key-file key.pem -cert-file cert.pem   (seed form)')
    .action(async (o) => runServer(o));

  configFlags(commonOptions(program.command('loadbalancer').alias('lb').description('check servers over QHCP, mark them UP/DOWN, answer STATUS and PICK')), ['loadbalancer'])
    .addHelpText('after', '\nExample:\n  qhcp loadbalancer --servers "10.0.0.1:4243,10.0.0.2" --check-interval 10 --max-fail-attempts 3 --cert-file ca.pem\n  qhcp -loadbalancer -servers "host1:4243,host2:4244" -loadbalancer-port 4242 -max-fail-attempts 3 -check-interval 10 -reconnect-interval 30 -cert-file ca.pem   (seed form)')
    .action(async (o) => runLoadBalancer(o));

  queryOptions(program.command('status').description("print a load balancer's view of its servers"))
    .option('--service <name>', 'only the servers that name this service (host:4243/web)')
    .addHelpText('after', '\nExample:\n  qhcp status --address 127.0.0.1:4242 --json\n  qhcp status --service web')
    .action(async (o: StatusOpts) => runStatus(o));

  queryOptions(program.command('pick').description('ask a load balancer which server to use'))
    .option('--key <key>', 'affinity key passed to the balancer')
    .option('--count <n>', 'ask n times over one connection (default: 1)', num('--count', 'int'))
    .option('--service <name>', 'choose among the servers that name this service (host:4243/web)')
    .addHelpText('after', '\nExample:\n  qhcp pick --address 127.0.0.1:4242 --count 6 --json')
    .action(async (o: PickOpts) => runPick(o));

  queryOptions(program.command('watch').description("follow a load balancer's view: print every change as it happens"))
    .option('--service <name>', 'only the servers that name this service (host:4243/web)')
    .option('--match <pattern>', 'only the servers whose address matches (* matches any run of characters)')
    .option('--count <n>', 'exit after n updates (the first full view counts as one)', num('--count', 'int'))
    .option('--duration <seconds>', 'exit after this long', num('--duration', 'number'))
    .option('--stale-after <seconds>', 'mark the view stale after this long without a load balancer (default: 5)', num('--stale-after', 'number'))
    .addHelpText('after', '\nThe address may list several load balancers, comma-separated: on a lost connection the next is tried.\nExample:\n  qhcp watch --address 127.0.0.1:4242 --service web\n  qhcp watch --address 10.0.0.1:4242,10.0.0.2:4242 --json --count 10')
    .action(async (o: QueryOpts & { service?: string; match?: string; count?: number; duration?: number; staleAfter?: number }) => {
      const target = await queryTarget(o);
      const [{ createWatch }, { readPem }, { printWatch }] = await Promise.all([import('../client/watch.ts'), import('../transport/tls.ts'), import('./watch.ts')]);
      const timeoutMs = (o.timeout ?? 5) * 1000;
      const view = await createWatch({
        addresses: target.address.split(',').map((a) => parseAddress(a.trim(), DEFAULT_LOADBALANCER_PORT)),
        timeoutMs,
        readyTimeoutMs: timeoutMs,
        ...(o.service !== undefined ? { service: o.service } : {}),
        ...(o.match !== undefined ? { match: o.match } : {}),
        ...(o.staleAfter !== undefined ? { staleAfterMs: o.staleAfter * 1000 } : {}),
        ...(target.caFile ? { ca: readPem(target.caFile, 'certificate') } : {}),
        ...(target.serverName ? { serverName: target.serverName } : {}),
        // Read again at each connection: a token file may be renewed while we watch.
        ...(o.tokenFile ? { token: () => readToken(o.tokenFile!) } : {}),
      });
      const printed = printWatch(view, { ...(o.json ? { json: true } : {}), ...(o.count !== undefined ? { count: Math.max(1, o.count) } : {}), ...(o.duration !== undefined ? { duration: o.duration } : {}), out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) });
      view.start();
      try {
        await view.ready(timeoutMs);
        await printed;
      } finally {
        await view.close();
      }
    });

  addControlCommands(program, num);

  const config = program.command('config').description('show the merged configuration and where each value came from');
  configFlags(commonOptions(config), ['server', 'loadbalancer'])
    .addOption(new Option('--role <role>', 'role whose flags apply').choices(['server', 'loadbalancer']).default('loadbalancer'))
    .option('--print', 'print the merged configuration (the default)')
    .option('--json', 'as JSON')
    .action(async (o: CommonOpts & Record<string, unknown> & { role: 'server' | 'loadbalancer'; json?: boolean }) => {
      const { config: c, sources, file } = await loadConfig(o, o.role, ['server', 'loadbalancer']);
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
    .command('admin')
    .description("change a running load balancer through its HTTP admin API (bearer token)")
    .argument('<action>', 'list | add <address> | remove <address> | drain|ready|maint <address> | weight <address> <n>')
    .argument('[args...]', 'the backend address (host:port or host:port/service), and the weight')
    .option('--url <url>', 'the load balancer\'s HTTP listener', 'http://127.0.0.1:4280/')
    .option('--token-file <file>', 'file with the bearer token (the load balancer\'s httpTokenFile); writes need it')
    .option('--json', 'machine-readable JSON output')
    .option('--timeout <seconds>', 'give up after (default: 5)', num('--timeout', 'number'))
    .addHelpText('after', '\nExample:\n  qhcp admin list\n  qhcp admin drain 10.0.0.1:4243 --token-file /etc/qhcp/token\n  qhcp admin add 10.0.0.9:4243 --token-file /etc/qhcp/token --url http://127.0.0.1:4280/')
    .action(async (action: string, args: string[], o: { url: string; tokenFile?: string; json?: boolean; timeout?: number }) => {
      const { runAdmin } = await import('./admin.ts');
      await runAdmin(action, args, o);
    });

  program
    .command('demo')
    .description('three servers and a load balancer on loopback, self-signed certificates; Ctrl-C stops all')
    .option('--check-interval <seconds>', 'check interval for the demo (default: 2)', num('--check-interval', 'number'))
    .option('--tcp-proxy [port]', 'also run three HTTP services and the tcp-proxy plugin on this port (default 8000)')
    .action(async (o: { checkInterval?: number; tcpProxy?: string | boolean }) => {
      const { runDemo } = await import('./demo.ts');
      let tcpProxy: number | undefined;
      if (o.tcpProxy !== undefined) {
        tcpProxy = o.tcpProxy === true ? 8000 : Number(o.tcpProxy);
        if (!Number.isInteger(tcpProxy) || tcpProxy < 1 || tcpProxy > 65535) throw new LocalError('QHCP_ERR_CLI_USAGE', `--tcp-proxy: "${String(o.tcpProxy)}" is not a port (1-65535)`);
      }
      await runDemo({ checkInterval: o.checkInterval ?? 2, ...(tcpProxy !== undefined ? { tcpProxy } : {}) });
    });

  return program;
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
