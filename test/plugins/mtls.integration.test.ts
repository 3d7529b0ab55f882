/**
 * The mtls plugin between real processes: one `qhcp server` requiring client certificates from
 * a test CA (allowedNames, a CRL), and one `qhcp loadbalancer` per certificate presented. The
 * good one sees the server UP; the others see it refused with the documented error in their
 * status (no certificate, wrong CA, wrong name, revoked), and the good one stays UP throughout:
 * one refused peer does not affect another. An expired certificate is presented by a QUIC client
 * in this process (a load balancer refuses to start with one, tested below).
 */
import { expect } from 'chai';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { connect } from '../../core/transport/quic.ts';
import { Session } from '../../core/protocol/session.ts';
import { makeCerts, makeClientCert, makeCrl, type TestCerts } from '../helpers/certs.ts';
import { queryStatus, startLoadBalancer, startServer, statusOf, stopAll, waitForState, waitUntil, runQhcp } from '../helpers/procs.ts';

describe('mtls between real processes', function () {
  this.timeout(120_000);
  let ca: TestCerts;
  let other: TestCerts;

  before(() => {
    ca = makeCerts('qhcp-mtls-');
    other = makeCerts('qhcp-mtls-other-');
  });
  after(async () => {
    await stopAll();
    ca.remove();
    other.remove();
  });

  function config(name: string, options: Record<string, unknown>): string {
    const file = join(ca.dir, `${name}.json`);
    writeFileSync(file, JSON.stringify({ plugins: [['mtls', options]] }));
    return file;
  }

  it('accepts the good certificate; refuses none, wrong CA, expired, wrong name and revoked with their errors', async () => {
    const good = await makeClientCert(ca, { name: 'good', dns: ['lb-1.test'] });
    const wrongCa = await makeClientCert(other, { name: 'wrong-ca', dns: ['lb-2.test'] });
    const expired = await makeClientCert(ca, { name: 'expired', dns: ['lb-3.test'], notBefore: new Date(Date.now() - 3 * 86_400_000), notAfter: new Date(Date.now() - 86_400_000) });
    const wrongName = await makeClientCert(ca, { name: 'wrong-name', dns: ['intruder.example'] });
    const revoked = await makeClientCert(ca, { name: 'revoked', dns: ['lb-4.test'] });
    const crl = await makeCrl(ca, 'ca.crl', [revoked.serial]);

    const server = await startServer({ args: ['--config', config('server', { caFile: ca.ca, allowedNames: ['lb-*.test'], crlFile: crl })] });
    expect(server.proc.output).to.match(/mtls: load balancers must present a client certificate/);
    expect(server.proc.output).to.not.match(/AUTH IS OPEN/);

    const lbArgs = (name: string, c?: { cert: string; key: string }) => ({ interval: 1, args: ['--check-timeout', '0.9', ...(c ? ['--config', config(name, { certFile: c.cert, keyFile: c.key })] : [])] });
    const [ok, none, badCa, badName, gone] = await Promise.all([
      startLoadBalancer([server.address], lbArgs('lb-good', good)),
      startLoadBalancer([server.address], lbArgs('lb-none')),
      startLoadBalancer([server.address], lbArgs('lb-wrong-ca', wrongCa)),
      startLoadBalancer([server.address], lbArgs('lb-wrong-name', wrongName)),
      startLoadBalancer([server.address], lbArgs('lb-revoked', revoked)),
    ]);
    const up = await waitForState(ok.port, server.address, 'UP', 30_000);
    expect(up.lastError).to.equal(null);

    const errorOf = (port: number, re: RegExp) =>
      waitUntil(async () => (await queryStatus(port)).find((s) => s.address === server.address && re.test(s.lastError ?? '')), 30_000, `${re} in the status`, 150);
    const refused = await Promise.all([
      errorOf(none.port, /requires a client certificate/),
      errorOf(badCa.port, /^AUTH_/),
      errorOf(badName.port, /^AUTH_/),
      errorOf(gone.port, /^AUTH_/),
    ]);
    expect(refused[0].lastError).to.match(/the server requires a client certificate \(TLS alert certificate_required\)/);
    expect(refused[1].lastError).to.match(/^AUTH_BAD_SIGNATURE: client certificate is not signed by the given CA$/);
    expect(refused[2].lastError).to.match(/^AUTH_BAD_CLAIM: client certificate names intruder\.example, wrong-name match no allowed name \(allowedNames\)$/);
    expect(refused[3].lastError).to.match(/^AUTH_REVOKED: client certificate CN=revoked \(serial [0-9A-F]+\) is revoked$/);
    for (const r of refused) expect(r.state).to.not.equal('UP');

    // An expired certificate (in-process client: the handshake completes, HELLO is refused).
    const channel = await connect({ host: '127.0.0.1', port: server.port, timeoutMs: 5000, clientCert: { cert: readFileSync(expired.cert, 'utf8'), key: readFileSync(expired.key, 'utf8') } });
    const session = new Session(channel, { role: 'client', onMessage: () => {} });
    const answer = await session.request('HELLO', { versions: [1], role: 'checker', node: 'mtls-expired' }, 5000).then(
      () => 'accepted',
      (e: unknown) => String(e),
    );
    session.close('done');
    expect(answer).to.match(/AUTH_EXPIRED.*client certificate CN=expired expired /);

    // The good load balancer was served throughout, and the server logged each refusal.
    const still = await statusOf(ok.port, server.address);
    expect(still.state).to.equal('UP');
    expect(still.lastError).to.equal(null);
    for (const code of ['AUTH_BAD_SIGNATURE', 'AUTH_EXPIRED', 'AUTH_BAD_CLAIM', 'AUTH_REVOKED']) {
      await waitUntil(() => new RegExp(`authentication failed.*${code}`).test(server.proc.output), 10_000, `the server to log ${code}`);
    }
  });

  it('a load balancer whose key does not match its certificate, or whose certificate expired, refuses to start with a clear error', async () => {
    const a = await makeClientCert(ca, { name: 'pair-a', dns: ['lb-5.test'] });
    const b = await makeClientCert(ca, { name: 'pair-b', dns: ['lb-6.test'] });
    const old = await makeClientCert(ca, { name: 'old', dns: ['lb-7.test'], notBefore: new Date(Date.now() - 3 * 86_400_000), notAfter: new Date(Date.now() - 86_400_000) });
    const lb = (name: string, certFile: string, keyFile: string) =>
      runQhcp(['loadbalancer', '--servers', '127.0.0.1:1', '--loadbalancer-host', '127.0.0.1', '--loadbalancer-port', '0', '--config', config(name, { certFile, keyFile })], { timeoutMs: 30_000 });
    const [mismatch, expired] = await Promise.all([lb('lb-mismatch', a.cert, b.key), lb('lb-old', old.cert, old.key)]);
    expect(mismatch.code).to.equal(2);
    expect(mismatch.stderr).to.match(/plugin mtls: certFile\/keyFile: key file .*pair-b\.key does not match certificate .*pair-a\.pem/);
    expect(expired.code).to.equal(2);
    expect(expired.stderr).to.match(/plugin mtls: certFile\/keyFile: certificate .*old\.pem expired /);
  });
});
