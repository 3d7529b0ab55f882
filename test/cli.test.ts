/**
 * The `qhcp` command line as a user meets it: every usage problem (unknown or misspelled flag,
 * bad number, bad address, port out of range or in use, missing/unreadable/mismatched TLS files)
 * ends the process with exit code 2 and exactly one line `qhcp: ...` on stderr naming the
 * problem, no stack trace; `--help` and `--version` exit 0. Runs the real binary.
 */
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { expect } from 'chai';
import { runQhcp, startServer, startLoadBalancer, queryStatus, freePort, stopAll, ROOT } from './helpers/procs.ts';
import { makeCerts, type TestCerts } from './helpers/certs.ts';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };

/** Asserts the usage-error contract: exit 2, one `qhcp:` line on stderr matching `re`, no stack. */
function expectUsageError(r: { code: number | null; stdout: string; stderr: string }, re: RegExp): void {
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  expect(r.code, `exit code; stderr: ${r.stderr}`).to.equal(2);
  expect(lines, `stderr lines: ${r.stderr}`).to.have.length(1);
  expect(lines[0]).to.match(/^qhcp: /);
  expect(lines[0]).to.match(re);
  expect(r.stderr).not.to.match(/^\s+at /m);
  expect(r.stdout).to.equal('');
}

/** Runs `cases` with at most `width` processes at once (2 cores; keep the file quick). */
async function inBatches<T>(cases: T[], width: number, fn: (c: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < cases.length; i += width) await Promise.all(cases.slice(i, i + width).map(fn));
}

describe('qhcp command line', function () {
  this.timeout(120_000);
  let certs: TestCerts;
  let cwd: string;
  let notPem: string;
  let aDir: string;

  before(() => {
    certs = makeCerts();
    // An empty working directory: no config file is found, so only the flags count.
    cwd = mkdtempSync(join(tmpdir(), 'qhcp-cli-'));
    notPem = join(cwd, 'not-a-key.txt');
    writeFileSync(notPem, 'this is not PEM\n');
    aDir = join(cwd, 'a-directory.pem');
    mkdirSync(aDir);
  });
  after(() => {
    certs?.remove();
    if (cwd) rmSync(cwd, { recursive: true, force: true });
  });
  afterEach(stopAll);

  describe('usage errors: exit 2, one line, no stack trace', () => {
    // [title, argv, what the line must say]. Seed (single-dash) and Node (double-dash) forms.
    const cases = (): Array<[string, string[], RegExp]> => [
      ['unknown flag, seed form', ['-server', '-bogus-flag', '1'], /unknown option '--bogus-flag'/],
      ['unknown flag, Node form', ['loadbalancer', '--servers', '127.0.0.1', '--frobnicate'], /unknown option '--frobnicate'/],
      ['misspelled flag (suggestion on the same line)', ['-loadbalancer', '-servers', '127.0.0.1', '-check-intervall', '1'], /unknown option '--check-intervall' \(did you mean --check-interval\?\)/],
      ['unknown command', ['frobnicate'], /unknown command 'frobnicate'/],
      ['stray argument', ['server', 'extra'], /too many arguments/],
      ['flag without its value', ['-server', '-server-port'], /--server-port <port>.*argument missing/],
      ['non-numeric port', ['-server', '-server-port', 'abc'], /--server-port: expected an integer, got "abc"/],
      ['fractional port', ['-server', '-server-port', '4243.5'], /--server-port: expected an integer/],
      ['non-numeric check interval', ['-loadbalancer', '-servers', '127.0.0.1', '-check-interval', 'ten'], /--check-interval: expected a number, got "ten"/],
      ['non-integer max-fail-attempts', ['-loadbalancer', '-servers', '127.0.0.1', '-max-fail-attempts', '2.5'], /--max-fail-attempts: expected an integer/],
      ['non-numeric reconnect interval', ['loadbalancer', '--servers', '127.0.0.1', '--reconnect-interval', '30s'], /--reconnect-interval: expected a number, got "30s"/],
      ['check interval out of range', ['-loadbalancer', '-servers', '127.0.0.1', '-check-interval', '-3'], /checkInterval: must be >= 0\.01 \(got -3\)/],
      ['max-fail-attempts zero', ['-loadbalancer', '-servers', '127.0.0.1', '-max-fail-attempts', '0'], /maxFailAttempts: must be >= 1 \(got 0\)/],
      ['check timeout not shorter than the interval', ['-loadbalancer', '-servers', '127.0.0.1', '-check-interval', '1', '-check-timeout', '2'], /checkTimeout: must be shorter than checkInterval/],
      ['server port out of range', ['-server', '-server-port', '70000'], /--server-port: port must be 0-65535, got 70000/],
      ['negative server port', ['-server', '-server-port', '-1'], /--server-port: port must be 0-65535/],
      ['load balancer port out of range', ['-loadbalancer', '-servers', '127.0.0.1', '-loadbalancer-port', '65536'], /--loadbalancer-port: port must be 0-65535, got 65536/],
      ['bad server IP', ['-server', '-server-ip', '999.1.1.1'], /--server-ip: expected an IP address, got "999\.1\.1\.1"/],
      ['bad load balancer host', ['-loadbalancer', '-servers', '127.0.0.1', '-loadbalancer-host', 'not an ip'], /--loadbalancer-host: expected an IP address/],
      ['address with a bad host', ['-loadbalancer', '-servers', 'bad host:4243'], /bad address "bad host:4243": not a valid host name or IP address/],
      ['address with a port out of range', ['-loadbalancer', '-servers', '127.0.0.1:99999'], /bad address "127\.0\.0\.1:99999": port must be 1-65535/],
      ['address with a non-numeric port', ['-loadbalancer', '-servers', '127.0.0.1:http'], /bad address "127\.0\.0\.1:http": port is not a number/],
      ['address with port 0', ['-loadbalancer', '-servers', '127.0.0.1:0'], /bad address "127\.0\.0\.1:0": port must be 1-65535/],
      ['address with a missing host', ['-loadbalancer', '-servers', ':4243'], /bad address ":4243": missing host/],
      ['bad IPv6 address in brackets', ['-loadbalancer', '-servers', '[::g]:4243'], /bad address "\[::g\]:4243"/],
      ['one bad address among good ones', ['-loadbalancer', '-servers', '127.0.0.1:4243,127.0.0.1:x,127.0.0.1:4245'], /bad address "127\.0\.0\.1:x"/],
      ['empty server list', ['-loadbalancer', '-servers', ','], /--servers: the list is empty/],
      ['no servers at all', ['-loadbalancer'], /no servers/],
      ['server listed twice', ['-loadbalancer', '-servers', '127.0.0.1:4243,127.0.0.1'], /server 127\.0\.0\.1:4243 is listed twice/],
      ['bad status format', ['-loadbalancer', '-servers', '127.0.0.1', '-status', 'fancy'], /'fancy' is invalid/],
      ['missing cert file (server)', ['-server', '-server-port', '0', '-cert-file', join(tmpdir(), 'qhcp-no-such-cert.pem'), '-key-file', certs.key], /cannot read certificate file .*qhcp-no-such-cert\.pem: no such file/],
      ['missing key file', ['-server', '-server-port', '0', '-cert-file', certs.cert, '-key-file', join(tmpdir(), 'qhcp-no-such-key.pem')], /cannot read key file .*qhcp-no-such-key\.pem: no such file/],
      // Tests run as root, where chmod 000 does not stop a read: a directory cannot be read by anyone.
      ['unreadable key file (a directory)', ['-server', '-server-port', '0', '-cert-file', certs.cert, '-key-file', aDir], /cannot read key file .*a-directory\.pem: is a directory/],
      ['key file that is not PEM', ['-server', '-server-port', '0', '-cert-file', certs.cert, '-key-file', notPem], /key file .*not-a-key\.txt holds no PEM key/],
      ['cert file that is not PEM', ['-server', '-server-port', '0', '-cert-file', notPem, '-key-file', certs.key], /certificate file .*not-a-key\.txt holds no PEM certificate/],
      ['key given where the cert belongs', ['-server', '-server-port', '0', '-cert-file', certs.key, '-key-file', certs.key], /certificate file .*key\.pem holds no PEM certificate/],
      ['cert without key', ['-server', '-server-port', '0', '-cert-file', certs.cert], /-cert-file and -key-file go together: -key-file is missing/],
      ['key without cert', ['server', '--server-port', '0', '--key-file', certs.key], /-cert-file and -key-file go together: -cert-file is missing/],
      ['missing CA file (load balancer)', ['-loadbalancer', '-servers', '127.0.0.1', '-cert-file', join(tmpdir(), 'qhcp-no-such-ca.pem')], /cannot read certificate file .*qhcp-no-such-ca\.pem: no such file/],
      ['status: bad address', ['status', '--address', 'no such host:1'], /bad address "no such host:1"/],
      ['pick: non-numeric count', ['pick', '--count', 'many'], /--count: expected an integer, got "many"/],
      ['missing config file', ['-server', '--config', 'nope.config.json'], /config file nope\.config\.json not found/],
    ];

    it('each case exits 2 with one line naming the problem', async function () {
      const failures: string[] = [];
      await inBatches(cases(), 4, async ([title, argv, re]) => {
        const r = await runQhcp(argv, { cwd, timeoutMs: 30_000 });
        try {
          expectUsageError(r, re);
        } catch (e) {
          failures.push(`${title}: qhcp ${argv.join(' ')}\n    ${(e as Error).message}`);
        }
      });
      expect(failures, failures.join('\n')).to.deep.equal([]);
    });
  });

  describe('ports in use', () => {
    it('a second server on the same port: exit 2, "address already in use"', async () => {
      const { port } = await startServer({ cwd });
      const r = await runQhcp(['-server', '-server-ip', '127.0.0.1', '-server-port', String(port)], { cwd });
      expectUsageError(r, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port} \\(UDP\\): address already in use`));
    });

    it('a load balancer whose query port is taken: exit 2, "address already in use"', async () => {
      const { port } = await startServer({ cwd });
      const r = await runQhcp(['-loadbalancer', '-servers', `127.0.0.1:${port}`, '-loadbalancer-host', '127.0.0.1', '-loadbalancer-port', String(port)], { cwd });
      expectUsageError(r, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port} \\(UDP\\): address already in use`));
    });
  });

  describe('addresses', () => {
    it('an address without a port takes the default server port 4243', async () => {
      const ghost = await freePort();
      const { port } = await startLoadBalancer(['127.0.0.1', 'localhost', '[::1]', `127.0.0.1:${ghost}`], { cwd, interval: 5 });
      const addresses = (await queryStatus(port)).map((s) => s.address);
      expect(addresses).to.deep.equal(['127.0.0.1:4243', 'localhost:4243', '[::1]:4243', `127.0.0.1:${ghost}`]);
    });
  });

  describe('status and pick exit codes', () => {
    it('no load balancer at the address: exit 1, one line', async () => {
      const nobody = await freePort();
      for (const cmd of ['status', 'pick']) {
        const r = await runQhcp([cmd, '--address', `127.0.0.1:${nobody}`, '--timeout', '1'], { cwd });
        expect(r.code, r.stderr).to.equal(1);
        expect(r.stderr.trim().split('\n')).to.have.length(1);
        expect(r.stderr).to.match(new RegExp(`^qhcp: cannot connect to 127\\.0\\.0\\.1:${nobody}: `));
        expect(r.stderr).not.to.match(/^\s+at /m);
      }
    });

    it('pick with no server UP: "none: no server is UP" (null in JSON), exit 3', async () => {
      const ghost = await freePort();
      const { port } = await startLoadBalancer([`127.0.0.1:${ghost}`], { cwd, interval: 5 });
      const r = await runQhcp(['pick', '--address', `127.0.0.1:${port}`], { cwd });
      expect(r.code).to.equal(3);
      expect(r.stdout.trim()).to.equal('none: no server is UP');
      const j = await runQhcp(['pick', '--address', `127.0.0.1:${port}`, '--json', '--count', '2'], { cwd });
      expect(j.code).to.equal(3);
      expect(j.stdout.trim().split('\n').map((l) => JSON.parse(l))).to.deep.equal([
        { server: null, reason: 'no server is UP' },
        { server: null, reason: 'no server is UP' },
      ]);
    });
  });

  describe('--help and --version', () => {
    const seedServer = { 'server-ip': '"0.0.0.0"', 'server-port': '4243' };
    const seedLb = { 'loadbalancer-port': '4242', 'max-fail-attempts': '3', 'check-interval': '10', 'reconnect-interval': '30' };

    /** Option lines of a help text: `--flag <arg>  description...` (wrapped lines joined). */
    function optionsOf(help: string): Map<string, string> {
      const out = new Map<string, string>();
      let current: string | undefined;
      for (const line of help.split('\n')) {
        const m = /^\s{2}(?:-\w, )?--([\w-]+)(?: <[^>]+>)?\s+(.*)$/.exec(line);
        if (m) {
          current = m[1]!;
          out.set(current, m[2]!);
        } else if (current && /^\s{10,}\S/.test(line)) out.set(current, `${out.get(current)} ${line.trim()}`);
        else current = undefined;
      }
      return out;
    }

    for (const [role, argv, seed, needed] of [
      ['server', ['server', '--help'], seedServer, ['server-ip', 'server-port', 'key-file', 'cert-file', 'drain-grace', 'sample-interval', 'max-connections']],
      ['server (seed form)', ['-server', '-help'], seedServer, ['server-ip', 'server-port', 'key-file', 'cert-file']],
      ['loadbalancer', ['loadbalancer', '--help'], seedLb, ['servers', 'loadbalancer-port', 'max-fail-attempts', 'check-interval', 'reconnect-interval', 'cert-file', 'rise-attempts', 'check-timeout', 'jitter', 'status']],
      ['loadbalancer (seed form)', ['-loadbalancer', '-h'], seedLb, ['servers', 'loadbalancer-port', 'max-fail-attempts', 'check-interval', 'reconnect-interval', 'cert-file']],
    ] as Array<[string, string[], Record<string, string>, string[]]>) {
      it(`${role} --help lists every flag with its default, and examples`, async () => {
        const r = await runQhcp(argv, { cwd });
        expect(r.code).to.equal(0);
        expect(r.stderr).to.equal('');
        const opts = optionsOf(r.stdout);
        for (const f of needed) expect(opts.has(f), `--${f} in help:\n${r.stdout}`).to.equal(true);
        for (const [f, d] of Object.entries(seed)) expect(opts.get(f), `--${f}`).to.include(`(default: ${d})`);
        // Every flag says its default, or that it is optional / has none (the server list).
        for (const [f, text] of opts) {
          if (f === 'help' || f === 'servers') continue;
          expect(text, `--${f} says its default`).to.match(/default|optional/);
        }
        expect(r.stdout).to.match(/Example:\n\s+qhcp (server|loadbalancer) --/);
        expect(r.stdout).to.match(/qhcp -(server|loadbalancer) -/);
      });
    }

    it('--help without a role shows both forms and the commands', async () => {
      const r = await runQhcp(['--help'], { cwd });
      expect(r.code).to.equal(0);
      for (const c of ['server', 'loadbalancer', 'status', 'pick']) expect(r.stdout).to.match(new RegExp(`^\\s+${c}\\b`, 'm'));
      expect(r.stdout).to.include('qhcp -server -server-ip 0.0.0.0 -server-port 4243 -key-file key.pem -cert-file cert.pem');
      expect(r.stdout).to.include('qhcp -loadbalancer -servers "host1:4243,host2:4244" -loadbalancer-port 4242');
    });

    it('status and pick --help show their flags and an example', async () => {
      for (const cmd of ['status', 'pick']) {
        const r = await runQhcp([cmd, '--help'], { cwd });
        expect(r.code).to.equal(0);
        expect(r.stdout).to.include('--address <host:port>').and.include('--json').and.include('--config <file>');
        expect(r.stdout.replace(/\s+/g, ' ')).to.include('(default: loadbalancerHost:loadbalancerPort from the config file when one is found, else "127.0.0.1:4242")');
        expect(r.stdout).to.match(new RegExp(`Example:\\n\\s+qhcp ${cmd} --address`));
      }
    });

    it('no role at all is a usage error: help on stderr, exit 2', async () => {
      const r = await runQhcp([], { cwd });
      expect(r.code).to.equal(2);
      expect(r.stdout).to.equal('');
      expect(r.stderr).to.match(/Usage: qhcp/);
    });

    it('--version and -version print the package version and exit 0', async () => {
      for (const flag of ['--version', '-version', '-v']) {
        const r = await runQhcp([flag], { cwd });
        expect(r.code).to.equal(0);
        expect(r.stdout.trim()).to.equal(pkg.version);
        expect(r.stderr).to.equal('');
      }
    });

    it('npx qhcp runs the same binary', async () => {
      const r = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
        const child = spawn('npx', ['--no-install', 'qhcp', '--version'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
        const t = setTimeout(() => child.kill('SIGKILL'), 60_000);
        child.on('exit', (code) => {
          clearTimeout(t);
          resolve({ code, stdout });
        });
      });
      expect(r.code).to.equal(0);
      expect(r.stdout.trim()).to.equal(pkg.version);
    });
  });
});
