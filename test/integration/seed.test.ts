/**
 * The seed's two commands, with its exact single-dash flags and certificates made by openssl:
 * the servers get -key-file/-cert-file, the load balancer -cert-file with the CA. The load
 * balancer reporting them UP proves the chain was verified; a wrong CA keeps them DOWN with a
 * certificate error. Also: the plain status lines when stdout is not a terminal, the redrawn
 * table when it is, and a load balancer's SIGTERM (TERMINATE to each server, exit 0).
 */
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { QhcpProcess, BIN, startServer, freePort, waitForState, waitUntil, queryStatus, stopAll } from '../helpers/procs.ts';
import { makeCerts, type TestCerts } from '../helpers/certs.ts';
import { StatusWatch, of } from './watch.ts';

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * Starts a load balancer with `argsFor(queryPort)`; resolves once it runs. Another free port
 * is tried if someone took this one meanwhile (other tests run beside us).
 */
async function startLb(argsFor: (port: number) => string[], cwd: string): Promise<{ lb: QhcpProcess; lbPort: number }> {
  for (let attempt = 1; ; attempt++) {
    const lbPort = await freePort();
    const lb = new QhcpProcess(argsFor(lbPort), { cwd });
    extra.push(lb);
    try {
      await lb.waitFor(/load balancer started/);
      return { lb, lbPort };
    } catch (e) {
      if (attempt >= 3 || !/address already in use/.test(lb.output)) throw e;
    }
  }
}

/** The seed's load balancer command, every flag as the seed wrote it; the query port on loopback only. */
function seedLoadBalancer(servers: string[], ca: string, cwd: string, interval = 1): Promise<{ lb: QhcpProcess; lbPort: number }> {
  return startLb(
    (port) => ['-loadbalancer', '-servers', servers.join(','), '-loadbalancer-port', String(port), '-max-fail-attempts', '3', '-check-interval', String(interval), '-reconnect-interval', '2', '-cert-file', ca, '-loadbalancer-host', '127.0.0.1'],
    cwd,
  );
}

/** Processes a test started on top of the shared servers; stopped after each test. */
const extra: QhcpProcess[] = [];

describe('the seed commands, with certificates', function () {
  this.timeout(90_000);
  let certs: TestCerts;
  let other: TestCerts;
  let cwd: string;
  let servers: Array<{ proc: QhcpProcess; port: number; address: string }>;

  before(async () => {
    certs = makeCerts();
    other = makeCerts();
    cwd = mkdtempSync(join(tmpdir(), 'qhcp-seed-'));
    // `qhcp -server -server-ip 127.0.0.1 -server-port P -key-file key.pem -cert-file cert.pem`
    servers = await Promise.all([0, 1].map(() => startServer({ cwd, args: ['-key-file', certs.key, '-cert-file', certs.cert] })));
  });
  afterEach(async () => {
    // Keep the servers (shared); stop what each test started on top of them.
    await Promise.all(extra.splice(0).map((p) => p.stop()));
  });
  after(async () => {
    await stopAll();
    certs?.remove();
    other?.remove();
    if (cwd) rmSync(cwd, { recursive: true, force: true });
  });

  it('the servers use the given certificate (no self-signed fallback)', () => {
    for (const s of servers) {
      expect(s.proc.output).to.match(new RegExp(`server listening address=127\\.0\\.0\\.1:${s.port}`));
      expect(s.proc.output).not.to.match(/self-signed/);
    }
  });

  it('the load balancer verifies them with the CA and prints one plain line per server with metrics', async () => {
    const { lb, lbPort } = await seedLoadBalancer(servers.map((s) => s.address), certs.ca, cwd);
    expect(lb.output).not.to.match(/not verified/);
    for (const s of servers) {
      const st = await waitForState(lbPort, s.address, 'UP', 30_000);
      expect(st.metrics).to.include.keys('cpu', 'memory', 'load1');
      expect(st.lastError).to.equal(null);
    }
    // stdout is a pipe here: `status: auto` gives key=value lines, not the redrawn table.
    for (const s of servers) {
      await lb.waitFor(new RegExp(`^\\S+ server=${esc(s.address)} state=UP cpu=\\d+\\.\\d% mem=\\d+\\.\\d% load1=\\d+\\.\\d\\d .*latency=\\d+\\.\\dms failures=0 in_state=\\d+s( |$)`, 'm'), 20_000);
    }
    expect(lb.stdout).not.to.match(/\x1b\[/);
    const lines = lb.stdout.split('\n').filter((l) => / server=\S+ state=/.test(l));
    for (const l of lines) expect(l).to.match(/^\d{4}-\d\d-\d\dT\S+Z server=127\.0\.0\.1:\d+ state=(UNKNOWN|UP) /);
  });

  it('the server certificate itself may be given as -cert-file (pinned)', async () => {
    const { lbPort } = await seedLoadBalancer([servers[0]!.address], certs.cert, cwd);
    await waitForState(lbPort, servers[0]!.address, 'UP', 30_000);
  });

  it('with a CA that did not sign them, they stay DOWN with a certificate error', async () => {
    const { lb, lbPort } = await seedLoadBalancer(servers.map((s) => s.address), other.ca, cwd, 0.5);
    const watch = new StatusWatch(lbPort);
    try {
      const snaps = await watch.until((s) => s.servers.every((x) => x.state === 'DOWN'), 30_000, 'both DOWN', 100);
      for (const s of snaps) for (const x of s.servers) expect(x.state).to.be.oneOf(['UNKNOWN', 'DOWN']);
      for (const x of snaps[snaps.length - 1]!.servers) {
        expect(x.lastError).to.match(/certificate is not signed by the given CA/);
        expect(x.failures).to.be.at.least(3);
        expect(x.metrics).to.deep.equal({});
      }
    } finally {
      await watch.close();
    }
    await lb.waitFor(/state=DOWN .*last_error="cannot connect to 127\.0\.0\.1:\d+: certificate is not signed by the given CA"/, 10_000);
  });

  it('on a terminal the status is a table redrawn in place', async function () {
    if (process.platform !== 'linux') this.skip();
    const lbPort = await freePort();
    const args = ['-loadbalancer', '-servers', servers[0]!.address, '-loadbalancer-host', '127.0.0.1', '-loadbalancer-port', String(lbPort), '-check-interval', '0.5', '-cert-file', certs.ca];
    // util-linux `script` gives the child a pseudo-terminal; `timeout` bounds its life in any case.
    const cmd = ['timeout', '-s', 'TERM', '20', process.execPath, BIN, ...args].map((a) => `'${a}'`).join(' ');
    const child = spawn('script', ['-qfec', cmd, '/dev/null'], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    try {
      await waitUntil(() => /\x1b\[H\x1b\[2J[^\x1b]*SERVER\s+STATE[^\x1b]*\sUP\s/.test(out), 30_000, 'a redrawn table with the server UP');
      const frames = out.split('\x1b[H\x1b[2J').slice(1);
      const last = frames[frames.length - 1]!.replace(/\r/g, '');
      expect(last).to.match(/^qhcp load balancer - \d\/1 UP - /);
      expect(last).to.match(new RegExp(`^${esc(servers[0]!.address)}\\s+UP\\s+SERVING\\s+READY\\s+\\S+\\s+\\d+\\.\\d%\\s+\\d+\\.\\d%`, 'm'));
      expect(out).not.to.match(/ server=\S+ state=/);
    } finally {
      if (child.exitCode === null) child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    }
  });
});

describe('load balancer SIGTERM', function () {
  this.timeout(90_000);
  let serverCwd: string;
  let lbCwd: string;

  before(() => {
    serverCwd = mkdtempSync(join(tmpdir(), 'qhcp-spy-'));
    lbCwd = mkdtempSync(join(tmpdir(), 'qhcp-lb-'));
    // A test plugin, enabled the way users enable theirs: it prints the frames we look for.
    writeFileSync(
      join(serverCwd, 'qhcp.config.mjs'),
      `export default {
  plugins: [{
    name: 'frame-spy', family: 'other', roles: ['server'],
    apply(core) {
      core.hooks.frame.tap('frame-spy', (dir, msg, s) => {
        if (msg.type.startsWith('TERMINATE') || msg.type === 'DRAIN') process.stderr.write('frame-spy ' + dir + ' ' + msg.type + ' ' + s.remote + '\\n');
      });
    },
  }],
};
`,
    );
  });
  afterEach(async () => {
    await Promise.all(extra.splice(0).map((p) => p.stop()));
    await stopAll();
  });
  after(() => {
    for (const d of [serverCwd, lbCwd]) if (d) rmSync(d, { recursive: true, force: true });
  });

  it('sends TERMINATE to each server and exits 0; the servers stay up and serve a new load balancer', async () => {
    const servers = await Promise.all([0, 1].map(() => startServer({ cwd: serverCwd })));
    const { lb, lbPort } = await startLb((port) => ['-loadbalancer', '-servers', servers.map((s) => s.address).join(','), '-loadbalancer-host', '127.0.0.1', '-loadbalancer-port', String(port), '-check-interval', '0.5'], lbCwd);
    for (const s of servers) await waitForState(lbPort, s.address, 'UP', 30_000);
    for (const s of servers) expect(s.proc.output).not.to.include('frame-spy in TERMINATE');

    lb.signal('SIGTERM');
    expect(await lb.exited).to.deep.equal({ code: 0, signal: null });
    expect(lb.output).to.match(/load balancer stopped/);
    for (const s of servers) {
      await s.proc.waitFor(/frame-spy in TERMINATE /, 10_000);
      await s.proc.waitFor(/frame-spy out TERMINATE_ACK /, 10_000);
      expect(s.proc.running).to.equal(true);
    }

    // The Node form this time.
    const { lbPort: lb2Port } = await startLb((port) => ['loadbalancer', '--servers', servers.map((s) => s.address).join(','), '--loadbalancer-host', '127.0.0.1', '--loadbalancer-port', String(port), '--check-interval', '0.5'], lbCwd);
    for (const s of servers) await waitForState(lb2Port, s.address, 'UP', 30_000);
    expect((await queryStatus(lb2Port)).every((x) => x.state === 'UP')).to.equal(true);
  });
});

export { of };
