/**
 * What an operator sees at start-up and from `qhcp status` (issue 10, "Behaviour an operator
 * expects"): an agent's certificate and key are checked before anything listens (a key of
 * another pair or an expired certificate: one clear line, exit 2; a key others can read: a
 * warning), the start-up lists every plugin in use per family, and `qhcp status` finds the load
 * balancer (and the CA to verify it) in the config file. Real processes on loopback.
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { generate } from 'selfsigned';
import { createSocket } from 'node:dgram';
import { freePort, runQhcp, startServer, startLoadBalancer, stopAll, waitUntil } from './helpers/procs.ts';
import { makeCerts, type TestCerts } from './helpers/certs.ts';
import { queryTarget } from '../core/cli/cli.ts';

/** Whether a UDP port on 127.0.0.1 can be bound now (nothing listens there). */
async function portIsFreeUdp(port: number): Promise<boolean> {
  const s = createSocket('udp4');
  const ok = await new Promise<boolean>((r) => {
    s.once('error', () => r(false));
    s.bind(port, '127.0.0.1', () => r(true));
  });
  await new Promise<void>((r) => s.close(() => r()));
  return ok;
}

describe('operator behaviour at start-up and for qhcp status', function () {
  this.timeout(120_000);
  let a: TestCerts;
  let b: TestCerts;
  let dir: string;

  before(() => {
    a = makeCerts();
    b = makeCerts();
    dir = mkdtempSync(join(tmpdir(), 'qhcp-operator-'));
  });
  after(async () => {
    await stopAll();
    a.remove();
    b.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  it('an agent given a key that does not match its certificate: one clear line, exit 2, nothing listening', async () => {
    const port = await freePort();
    const r = await runQhcp(['-server', '-server-ip', '127.0.0.1', '-server-port', String(port), '-cert-file', a.cert, '-key-file', b.key], { cwd: dir });
    expect(r.code, r.stderr).to.equal(2);
    expect(r.stderr).to.equal(`qhcp: key file ${b.key} does not match certificate ${a.cert} (a different key pair)\n`);
    expect(r.stdout + r.stderr).not.to.match(/listening/);
    expect(await portIsFreeUdp(port)).to.equal(true);
  });

  it('an agent given an expired certificate: one clear line naming the date, exit 2', async () => {
    const pems = await generate([{ name: 'commonName', value: 'old' }], { keyType: 'ec', notBeforeDate: new Date(Date.now() - 3 * 86_400_000), notAfterDate: new Date(Date.now() - 86_400_000) } as Parameters<typeof generate>[1]);
    const cert = join(dir, 'old.pem');
    const key = join(dir, 'old.key');
    writeFileSync(cert, pems.cert);
    writeFileSync(key, pems.private, { mode: 0o600 });
    const r = await runQhcp(['server', '--server-ip', '127.0.0.1', '--server-port', String(await freePort()), '--cert-file', cert, '--key-file', key], { cwd: dir });
    expect(r.code, r.stderr).to.equal(2);
    expect(r.stderr).to.match(new RegExp(`^qhcp: certificate ${cert.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} expired .+ GMT\\n$`));
  });

  it('a missing, unreadable or non-PEM certificate or key, or only one of the two: one clear line each, exit 2', async () => {
    const notPem = join(dir, 'not-pem.txt');
    writeFileSync(notPem, 'hello\n');
    const agent = (cert: string, key?: string) => runQhcp(['server', '--server-ip', '127.0.0.1', '--server-port', '0', '--cert-file', cert, ...(key ? ['--key-file', key] : [])], { cwd: dir });
    const missing = join(dir, 'nope.pem');
    const runs = await Promise.all([agent(missing, a.key), agent(dir, a.key), agent(a.cert, notPem), agent(notPem, a.key), agent(a.cert)]);
    const lines = [
      `qhcp: cannot read certificate file ${missing}: no such file\n`,
      `qhcp: cannot read certificate file ${dir}: is a directory\n`,
      `qhcp: key file ${notPem} holds no PEM key\n`,
      `qhcp: certificate file ${notPem} holds no PEM certificate\n`,
      'qhcp: -cert-file and -key-file go together: -key-file is missing\n',
    ];
    runs.forEach((r, i) => {
      expect(r.code, r.stderr).to.equal(2);
      expect(r.stderr).to.equal(lines[i]);
    });
  });

  it('a load balancer whose query-port key does not match its certificate: one clear line, exit 2', async () => {
    const cfg = join(dir, 'lb-mismatch.json');
    writeFileSync(cfg, JSON.stringify({ certFile: a.cert, keyFile: b.key }));
    const r = await runQhcp(['loadbalancer', '--servers', '127.0.0.1:1', '--loadbalancer-host', '127.0.0.1', '--loadbalancer-port', '0', '--config', cfg], { cwd: dir });
    expect(r.code, r.stderr).to.equal(2);
    expect(r.stderr).to.equal(`qhcp: key file ${b.key} does not match certificate ${a.cert} (a different key pair)\n`);
  });

  it('a private key readable by others: the agent starts and warns once, naming the file and mode', async () => {
    chmodSync(a.key, 0o644);
    const { proc } = await startServer({ args: ['-cert-file', a.cert, '-key-file', a.key], cwd: dir });
    expect(proc.output).to.include(`private key file ${a.key} is readable by others (mode 644); chmod 600 it`);
    await proc.stop();
    chmodSync(a.key, 0o600);
    const quiet = await startServer({ args: ['-cert-file', a.cert, '-key-file', a.key], cwd: dir });
    expect(quiet.proc.output).not.to.include('readable by others');
    await quiet.proc.stop();
  });

  it('the start-up lists every plugin in use per family; a webhook joins the log alert', async () => {
    const cfg = join(dir, 'hooked');
    rmSync(cfg, { recursive: true, force: true });
    const { mkdirSync } = await import('node:fs');
    mkdirSync(cfg);
    writeFileSync(join(cfg, 'qhcp.config.json'), JSON.stringify({ plugins: [['webhook', { url: 'http://127.0.0.1:9/hook' }]] }));
    const agent = await startServer({ cwd: cfg });
    const line = await agent.proc.waitFor(/server listening.*/);
    expect(line[0]).to.match(/ plugins\.metrics=system-metrics( |$)/);
    const lb = await startLoadBalancer([agent.address], { cwd: cfg });
    const lbLine = await lb.proc.waitFor(/load balancer started.*/);
    expect(lbLine[0]).to.match(/ plugins\.alert=webhook,log( |$)/).and.match(/ plugins\.balancer=round-robin( |$)/);
  });

  it('qhcp status reads the load balancer address and CA from the config file, and verifies its certificate', async () => {
    const cfg = join(dir, 'status');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(cfg, { recursive: true });
    const agent = await startServer({ cwd: cfg });
    const lbPort = await freePort();
    // The LB's query port serves a certificate from CA `a`; the config names that CA as caFile.
    writeFileSync(join(cfg, 'qhcp.config.json'), JSON.stringify({ loadbalancerHost: '127.0.0.1', loadbalancerPort: lbPort, certFile: a.cert, keyFile: a.key, caFile: a.ca }));
    const target = await queryTarget({}, cfg);
    expect(target).to.deep.include({ address: `127.0.0.1:${lbPort}`, caFile: a.ca });
    // The servers are not verified here (the agent's certificate is self-signed): flags say so.
    await startLoadBalancer([agent.address], { cwd: cfg, port: lbPort, args: [] });
    const st = await waitUntil(
      async () => {
        const r = await runQhcp(['status', '--json'], { cwd: cfg });
        return r.code === 0 ? (JSON.parse(r.stdout) as { servers: Array<{ address: string }> }) : undefined;
      },
      30_000,
      'qhcp status without --address',
      500,
    );
    expect(st.servers.map((s) => s.address)).to.deep.equal([agent.address]);
    // A CA that did not sign the load balancer's certificate: refused, and the reason says why.
    writeFileSync(join(cfg, 'other.json'), JSON.stringify({ loadbalancerHost: '127.0.0.1', loadbalancerPort: lbPort, caFile: b.ca }));
    const bad = await runQhcp(['status', '--config', 'other.json'], { cwd: cfg });
    expect(bad.code).to.equal(1);
    expect(bad.stderr).to.match(/not signed by the given CA/);
  });
});
