/**
 * `qhcp status` and `qhcp pick`: the short commands a user types and waits for. They run without
 * commander and without the config schema (core/cli/main.ts sends them here first): their flags
 * are read with node:util parseArgs, and anything this parser does not take as it is (--help, an
 * unknown flag, a bad number, an extra argument) goes to the full command line (cli.ts), which
 * reports it exactly as for any other command. The actions are the same functions either way.
 * The build bundles this path into one file (scripts/bundle-cli.mjs): Node 20 loads ES modules
 * one file at a time, and this path is most of what `qhcp status` costs above starting Node.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { ConfigError, LocalError, PeerError, PluginError, ProtocolError, QhcpError, errorText } from '../errors.ts';
import { DEFAULT_LOADBALANCER_PORT } from '../config/ports.ts';
import { mayHoldConfig } from '../config/places.ts';
import { parseAddress } from '../util/address.ts';
import { safeJson, sanitize } from '../util/sanitize.ts';
import { render } from './status.ts';

/** Exit codes: 0 ok, 1 runtime failure, 2 usage/configuration. */
export const EXIT_USAGE = 2;

export interface QueryOpts {
  address?: string;
  config?: string;
  json?: boolean;
  certFile?: string;
  serverName?: string;
  timeout?: number;
  tokenFile?: string;
}

/** The token in a file (a JWT, one line); never from a flag, which other users can see. */
export function readToken(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new LocalError('QHCP_ERR_CLI_USAGE', `--token-file ${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? errorText(e)})`);
  }
  const token = text.trim();
  if (!token || /\s/.test(token)) throw new LocalError('QHCP_ERR_CLI_USAGE', `--token-file ${file}: expected one token on one line`);
  return token;
}

/**
 * Where `qhcp status` / `qhcp pick` ask: the flags, else the load balancer's query address and
 * CA from the config file when one is found (a wildcard listen address means this host), else
 * 127.0.0.1:4242. Only the four keys are read from the file; they are checked by type.
 */
export async function queryTarget(o: QueryOpts, cwd = process.cwd()): Promise<{ address: string; caFile?: string; serverName?: string; from: string }> {
  let address = o.address;
  let caFile = o.certFile;
  let serverName = o.serverName;
  let from = 'flags';
  // A directory without any config file: the config machinery (cosmiconfig, ajv) is not loaded.
  // With --address alone a config file is still read, for its caFile: skipping it would connect
  // without verifying the load balancer that the operator's config says to verify.
  if ((!address || !caFile) && (o.config !== undefined || mayHoldConfig(cwd))) {
    const { findConfigFile } = await import('../config/config.ts');
    const { data, file } = await findConfigFile({ ...(o.config ? { file: o.config } : {}), cwd });
    const c = (data && typeof data === 'object' ? data : {}) as Record<string, unknown>;
    if (file) {
      const str = (k: string) => (typeof c[k] === 'string' && c[k] !== '' ? (c[k] as string) : undefined);
      if (!address && (str('loadbalancerHost') !== undefined || Number.isInteger(c.loadbalancerPort))) {
        const host = str('loadbalancerHost') ?? '127.0.0.1';
        const local = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
        const port = Number.isInteger(c.loadbalancerPort) ? (c.loadbalancerPort as number) : DEFAULT_LOADBALANCER_PORT;
        address = isIP(local) === 6 ? `[${local}]:${port}` : `${local}:${port}`;
        from = `config file ${file}`;
      }
      if (!caFile && str('caFile')) {
        const { resolve, dirname } = await import('node:path');
        caFile = resolve(dirname(file), str('caFile')!);
      }
      serverName ??= str('serverName');
    }
  }
  return { address: address ?? `127.0.0.1:${DEFAULT_LOADBALANCER_PORT}`, ...(caFile ? { caFile } : {}), ...(serverName ? { serverName } : {}), from };
}

export async function openQuery(o: QueryOpts) {
  const target = await queryTarget(o);
  const a = parseAddress(target.address, DEFAULT_LOADBALANCER_PORT);
  const [{ QueryClient }, { readPem }] = await Promise.all([import('../client/query.ts'), import('../transport/tls.ts')]);
  return QueryClient.open({
    host: a.host,
    port: a.port,
    timeoutMs: (o.timeout ?? 5) * 1000,
    ...(target.caFile ? { ca: readPem(target.caFile, 'certificate') } : {}),
    ...(target.serverName ? { serverName: target.serverName } : {}),
    ...(o.tokenFile ? { token: readToken(o.tokenFile) } : {}),
  });
}

export type StatusOpts = QueryOpts & { service?: string };
export type PickOpts = QueryOpts & { key?: string; count?: number; service?: string };

/** `qhcp status`: one STATUS, printed as the table (or JSON). */
export async function runStatus(o: StatusOpts): Promise<void> {
  const q = await openQuery(o);
  try {
    const st = await q.status(o.service);
    // Peer text (addresses, errors) is escaped: JSON as \uNNNN (lossless), the table as \xNN.
    process.stdout.write((o.json ? safeJson(st, 2) : render('table', st.servers, Date.now())) + '\n');
  } finally {
    await q.close();
  }
}

/** `qhcp pick`: `count` PICKs over one connection; exit code 3 when one found no server. */
export async function runPick(o: PickOpts): Promise<void> {
  const q = await openQuery(o);
  let none = false;
  try {
    const n = Math.max(1, Math.min(o.count ?? 1, 100_000));
    for (let i = 0; i < n; i++) {
      const r = await q.pick(o.key, o.service);
      if (!r.server) none = true;
      process.stdout.write((o.json ? safeJson(r) : r.server === null ? `none: ${sanitize(r.reason ?? '', 1024)}` : sanitize(r.server, 300)) + '\n');
    }
  } finally {
    await q.close();
  }
  if (none) process.exitCode = 3;
}

/** Prints a usage/config error as one line (or one line per config problem) and exits 2; other failures exit 1. */
export function fail(e: unknown): never {
  if (e instanceof ConfigError) {
    // One problem (the usual bad flag value) fits on one line; several are listed below.
    process.stderr.write(e.problems.length === 1 ? `qhcp: invalid configuration: ${e.problems[0]}\n` : `qhcp: invalid configuration:\n${e.problems.map((p) => `  ${p}`).join('\n')}\n`);
    process.exit(EXIT_USAGE);
  }
  if (e instanceof LocalError && e.code !== 'QHCP_ERR_CONNECT' && e.code !== 'QHCP_ERR_CONTROL' && !(e instanceof PluginError)) {
    process.stderr.write(`qhcp: ${e.message}\n`);
    process.exit(EXIT_USAGE);
  }
  if (e instanceof QhcpError || e instanceof PeerError || e instanceof ProtocolError) {
    process.stderr.write(`qhcp: ${sanitize(e instanceof PeerError ? e.toString() : e.message, 2000)}\n`);
    process.exit(1);
  }
  process.stderr.write(`qhcp: unexpected error: ${errorText(e)}\n`);
  if (process.env.QHCP_DEBUG) console.error(e);
  process.exit(1);
}

const QUERY_FLAGS = {
  address: { type: 'string' },
  config: { type: 'string' },
  json: { type: 'boolean' },
  'cert-file': { type: 'string' },
  'server-name': { type: 'string' },
  timeout: { type: 'string' },
  'token-file': { type: 'string' },
  service: { type: 'string' },
} as const;
const PICK_FLAGS = { ...QUERY_FLAGS, key: { type: 'string' }, count: { type: 'string' } } as const;

/** A number flag's value as cli.ts's parser takes it, else undefined (then cli.ts reports it). */
function numberOf(v: string | undefined, int: boolean): number | undefined | null {
  if (v === undefined) return undefined;
  const n = Number(v);
  return v.trim() === '' || !Number.isFinite(n) || (int && !Number.isInteger(n)) ? null : n;
}

/**
 * The options of `qhcp status ...` / `qhcp pick ...` when this parser takes the arguments as
 * they are; undefined otherwise (help, unknown flags, bad values: the full CLI handles those).
 */
export function parseQueryArgs(argv: readonly string[]): { command: 'status'; opts: StatusOpts } | { command: 'pick'; opts: PickOpts } | undefined {
  const command = argv[0];
  if (command !== 'status' && command !== 'pick') return undefined;
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: argv.slice(1), options: command === 'pick' ? PICK_FLAGS : QUERY_FLAGS, strict: true, allowPositionals: false }));
  } catch {
    return undefined;
  }
  const str = (k: string) => values[k] as string | undefined;
  const timeout = numberOf(str('timeout'), false);
  const count = numberOf(str('count'), true);
  if (timeout === null || count === null) return undefined;
  const base: QueryOpts & { service?: string } = {
    ...(str('address') !== undefined ? { address: str('address') } : {}),
    ...(str('config') !== undefined ? { config: str('config') } : {}),
    ...(values.json ? { json: true } : {}),
    ...(str('cert-file') !== undefined ? { certFile: str('cert-file') } : {}),
    ...(str('server-name') !== undefined ? { serverName: str('server-name') } : {}),
    ...(timeout !== undefined ? { timeout } : {}),
    ...(str('token-file') !== undefined ? { tokenFile: str('token-file') } : {}),
    ...(str('service') !== undefined ? { service: str('service') } : {}),
  };
  if (command === 'status') return { command, opts: base };
  return { command, opts: { ...base, ...(str('key') !== undefined ? { key: str('key') } : {}), ...(count !== undefined ? { count } : {}) } };
}

/**
 * Runs `qhcp status` / `qhcp pick` when parseQueryArgs takes `argv`; returns false, having done
 * nothing, when the full command line must handle it.
 */
export async function runQueryCommand(argv: readonly string[]): Promise<boolean> {
  const parsed = parseQueryArgs(argv);
  if (!parsed) return false;
  // `qhcp status | head` closes our stdout early: that is the reader's choice, not an error.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => process.exit(e.code === 'EPIPE' ? 0 : 1));
  try {
    if (parsed.command === 'status') await runStatus(parsed.opts);
    else await runPick(parsed.opts);
  } catch (e) {
    fail(e);
  }
  return true;
}
