/**
 * The mtls plugin's policy (ClientCertPolicy.judge) on real certificates from test/helpers/certs.ts:
 * each refusal has its wire code and reason; the options not covered between processes
 * (revokedSerials, allowedSubjects, extendedKeyUsage, not yet valid, a pinned certificate, a CRL
 * from another CA).
 */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { ClientCertPolicy, namePattern, normalizeSerial } from '../../plugins/auth/mtls.ts';
import { makeCerts, makeClientCert, makeCrl, type TestCerts } from '../helpers/certs.ts';
import { ConfigError } from '../../core/errors.ts';

const der = (file: string) => new Uint8Array(new X509Certificate(readFileSync(file, 'utf8')).raw);

describe('mtls policy', function () {
  this.timeout(30_000);
  let ca: TestCerts;
  let other: TestCerts;
  const base = { requireClientAuth: true };
  before(() => {
    ca = makeCerts('qhcp-mtls-unit-');
    other = makeCerts('qhcp-mtls-unit-other-');
  });
  after(() => {
    ca.remove();
    other.remove();
  });

  it('accepts a good chain with its first name as the subject and its expiry', async () => {
    const c = await makeClientCert(ca, { name: 'ok', dns: ['lb-1.test'] });
    const v = new ClientCertPolicy(readFileSync(ca.ca, 'utf8'), base).judge([der(c.cert)]);
    expect(v).to.include({ ok: true, subject: 'lb-1.test' });
    expect((v as { expiresAt: number }).expiresAt).to.equal(new Date(new X509Certificate(readFileSync(c.cert, 'utf8')).validTo).getTime());
  });

  it('refuses no certificate, garbage, not yet valid, a serial on the list, a server-only certificate, a subject not allowed', async () => {
    const caPem = readFileSync(ca.ca, 'utf8');
    const future = await makeClientCert(ca, { name: 'future', notBefore: new Date(Date.now() + 86_400_000), notAfter: new Date(Date.now() + 2 * 86_400_000) });
    const listed = await makeClientCert(ca, { name: 'listed', serial: '0a0b0c' });
    const server = await makeClientCert(ca, { name: 'server-only', eku: 'serverAuth' });
    const p = new ClientCertPolicy(caPem, { ...base, revokedSerials: ['0A:0B:0C'], allowedSubjects: ['CN=*'] });
    expect(p.judge([])).to.deep.include({ ok: false, kind: 'AUTH_REQUIRED' });
    expect(p.judge([new Uint8Array([48, 3, 1, 2, 3])])).to.deep.equal({ ok: false, kind: 'AUTH_INVALID', reason: 'client certificate does not parse' });
    expect(p.judge([der(future.cert)])).to.deep.include({ ok: false, kind: 'AUTH_NOT_YET_VALID' });
    expect(p.judge([der(listed.cert)])).to.deep.include({ ok: false, kind: 'AUTH_REVOKED' });
    const srv = p.judge([der(server.cert)]);
    expect(srv).to.deep.include({ ok: false, kind: 'AUTH_BAD_CLAIM' });
    expect((srv as { reason: string }).reason).to.match(/extendedKeyUsage lacks clientAuth/);
    expect(new ClientCertPolicy(caPem, { ...base, requireClientAuth: false }).judge([der(server.cert)]).ok).to.equal(true);
    const subj = new ClientCertPolicy(caPem, { ...base, allowedSubjects: ['CN=lb-*'] }).judge([der(listed.cert)]);
    expect(subj).to.deep.equal({ ok: false, kind: 'AUTH_BAD_CLAIM', reason: 'client certificate subject CN=listed is not allowed (allowedSubjects)' });
  });

  it('a pinned leaf in caFile is trusted; a certificate from another issuer than caFile is not', async () => {
    const c = await makeClientCert(ca, { name: 'pinned' });
    expect(new ClientCertPolicy(readFileSync(c.cert, 'utf8'), base).judge([der(c.cert)]).ok).to.equal(true);
    // caFile holding only the server certificate (not the CA that issued the client's).
    const v = new ClientCertPolicy(readFileSync(ca.cert, 'utf8'), base).judge([der(c.cert)]);
    expect(v).to.deep.include({ ok: false, kind: 'AUTH_BAD_SIGNATURE' });
  });

  it('a CRL is taken only when a CA of caFile signed it', async () => {
    const c = await makeClientCert(ca, { name: 'crl-victim' });
    const p = new ClientCertPolicy(readFileSync(ca.ca, 'utf8'), base);
    p.crls = await p.loadCrls(readFileSync(await makeCrl(ca, 'good.crl', [c.serial])), 'good.crl');
    expect(p.judge([der(c.cert)])).to.deep.include({ ok: false, kind: 'AUTH_REVOKED' });
    const foreign = await makeCrl(other, 'foreign.crl', [c.serial]);
    let err: unknown;
    await p.loadCrls(readFileSync(foreign), 'foreign.crl').catch((e: unknown) => (err = e));
    expect(err).to.be.instanceOf(ConfigError);
    expect(String((err as Error).message)).to.match(/is not signed by a CA in caFile/);
  });

  it('name patterns: * stays within one label; serials compare without colons, case or leading zeros', () => {
    expect(namePattern('lb-*.test').test('LB-7.test')).to.equal(true);
    expect(namePattern('lb-*.test').test('lb-7.evil.test')).to.equal(false);
    expect(namePattern('*.example.com').test('a.b.example.com')).to.equal(false);
    expect(namePattern('spiffe://example.org/lb/*').test('spiffe://example.org/lb/one')).to.equal(true);
    expect(normalizeSerial('00:0A:FF')).to.equal(normalizeSerial('aff'));
  });
});
