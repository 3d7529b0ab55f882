/**
 * Certificate path validation enforces CA constraints as `openssl verify` does (issue 13, item
 * 10): chains made with the openssl command, each judged by checkServerChain and by
 * `openssl verify`, which must agree; and a real QUIC connection to a server presenting a chain
 * signed by a leaf is refused.
 */
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { checkServerChain } from '../core/transport/tls.ts';
import { Listener, connect } from '../core/transport/quic.ts';

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

describe('Transport TLS: CA constraints on the certificate path', function () {
  this.timeout(60_000);
  let dir: string;
  const run = (args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], timeout: 20_000 });
  /** A key and a certificate signed by `issuer` (or self-signed with issuer undefined), with extensions `ext`. */
  function cert(name: string, issuer: string | undefined, ext: string): void {
    writeFileSync(join(dir, `${name}.cnf`), `${ext}\n`);
    if (!issuer) {
      run(['req', '-x509', ...EC, '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '2', '-subj', `/CN=${name}`, '-extensions', 'v3', '-config', configFile(name, ext)]);
      return;
    }
    run(['req', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
    run(['x509', '-req', '-in', `${name}.csr`, '-CA', `${issuer}.pem`, '-CAkey', `${issuer}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.cnf`]);
  }
  function configFile(name: string, ext: string): string {
    const f = join(dir, `${name}.req.cnf`);
    writeFileSync(f, `[req]\ndistinguished_name=dn\n[dn]\n[v3]\n${ext}\n`);
    return f;
  }
  const pem = (name: string) => readFileSync(join(dir, `${name}.pem`), 'utf8');
  const der = (name: string) => new Uint8Array(new X509Certificate(pem(name)).raw);
  /** `openssl verify` of `leaf` through `untrusted` intermediates to the CA: true when it accepts. */
  function opensslAccepts(leaf: string, untrusted: string[]): boolean {
    if (untrusted.length) writeFileSync(join(dir, 'untrusted.pem'), untrusted.map(pem).join(''));
    const r = spawnSync('openssl', ['verify', '-CAfile', 'ca.pem', ...(untrusted.length ? ['-untrusted', 'untrusted.pem'] : []), `${leaf}.pem`], { cwd: dir, timeout: 20_000 });
    return r.status === 0;
  }
  const SERVER = 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth';

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-tls-'));
    cert('ca', undefined, 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash');
    // A leaf (CA:FALSE) that nevertheless signs another leaf.
    cert('leaf1', 'ca', SERVER);
    cert('leaf2', 'leaf1', SERVER);
    // A proper intermediate and a server under it.
    cert('inter', 'ca', 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign');
    cert('server', 'inter', SERVER);
    // An intermediate that is a CA but may not sign certificates (keyUsage without keyCertSign).
    cert('nosign', 'ca', 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature');
    cert('server2', 'nosign', SERVER);
    // pathlen:0 under which a second intermediate issues the server: too deep.
    cert('inter2', 'inter', 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign');
    cert('server3', 'inter2', SERVER);
    // A certificate with no basicConstraints at all, signing a leaf.
    cert('plain', 'ca', 'keyUsage=digitalSignature,keyCertSign');
    cert('server4', 'plain', SERVER);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('accepts a server chained through a proper intermediate (as openssl verify does)', () => {
    expect(opensslAccepts('server', ['inter'])).to.equal(true);
    expect(checkServerChain([der('server'), der('inter')], pem('ca'), '127.0.0.1')).to.equal(undefined);
    expect(opensslAccepts('leaf1', [])).to.equal(true);
    expect(checkServerChain([der('leaf1')], pem('ca'), '127.0.0.1')).to.equal(undefined);
  });

  it('refuses a chain signed by a leaf (basicConstraints CA:FALSE), as openssl verify does', () => {
    expect(opensslAccepts('leaf2', ['leaf1'])).to.equal(false);
    expect(checkServerChain([der('leaf2'), der('leaf1')], pem('ca'), '127.0.0.1')).to.match(/leaf1 is not a CA \(basicConstraints CA:FALSE\)/);
  });

  it('refuses an issuer whose keyUsage lacks keyCertSign', () => {
    expect(opensslAccepts('server2', ['nosign'])).to.equal(false);
    expect(checkServerChain([der('server2'), der('nosign')], pem('ca'), '127.0.0.1')).to.match(/keyCertSign/);
  });

  it('refuses a path longer than an issuer pathLenConstraint allows', () => {
    expect(opensslAccepts('server3', ['inter2', 'inter'])).to.equal(false);
    expect(checkServerChain([der('server3'), der('inter2'), der('inter')], pem('ca'), '127.0.0.1')).to.match(/pathLenConstraint/);
  });

  it('refuses an issuer with no basicConstraints', () => {
    expect(opensslAccepts('server4', ['plain'])).to.equal(false);
    expect(checkServerChain([der('server4'), der('plain')], pem('ca'), '127.0.0.1')).to.match(/no basicConstraints/);
  });

  it('a QUIC connection to a server presenting a leaf-signed chain is refused; the proper chain is accepted', async () => {
    const serve = (name: string, chain: string[]) =>
      Listener.listen({ host: '127.0.0.1', port: 0, cert: chain.map(pem).join(''), key: readFileSync(join(dir, `${name}.key`), 'utf8'), onChannel: () => {} });
    const bad = await serve('leaf2', ['leaf2', 'leaf1']);
    const good = await serve('server', ['server', 'inter']);
    try {
      const err = await connect({ host: '127.0.0.1', port: bad.port, ca: pem('ca'), timeoutMs: 5000 }).then(
        (ch) => {
          void ch.close(0, 'unexpected');
          return undefined;
        },
        (e: unknown) => e,
      );
      expect(err, 'connect through a leaf-signed chain must fail').to.have.property('code', 'QHCP_ERR_CONNECT');
      expect(String((err as Error).message)).to.match(/not a CA/);
      const ch = await connect({ host: '127.0.0.1', port: good.port, ca: pem('ca'), timeoutMs: 5000 });
      await ch.close(0, 'done');
    } finally {
      await bad.stop();
      await good.stop();
    }
  });
});
