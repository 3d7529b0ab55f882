/**
 * Test certificates made with the `openssl` command: a CA and a server certificate it signs
 * (for 127.0.0.1 and localhost), written into a fresh temporary directory.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestCerts {
  dir: string;
  /** CA certificate (PEM): what a load balancer's -cert-file points at. */
  ca: string;
  caKey: string;
  /** Server certificate signed by the CA, and its key. */
  cert: string;
  key: string;
  remove(): void;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'], timeout: 20_000 });
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** A CA plus a CA-signed server certificate for 127.0.0.1/localhost, valid for two days. */
export function makeCerts(prefix = 'qhcp-certs-'): TestCerts {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  openssl(['req', '-x509', ...EC, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=qhcp test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
  openssl(['req', ...EC, '-keyout', 'key.pem', '-out', 'server.csr', '-subj', '/CN=localhost'], dir);
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n');
  openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'cert.pem', '-days', '2', '-extfile', 'ext.cnf'], dir);
  return {
    dir,
    ca: join(dir, 'ca.pem'),
    caKey: join(dir, 'ca.key'),
    cert: join(dir, 'cert.pem'),
    key: join(dir, 'key.pem'),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export interface ClientCertOptions {
  /** File name stem in the CA's directory: writes STEM.pem and STEM.key. */
  name: string;
  subject?: string;
  /** subjectAltName DNS names. */
  dns?: string[];
  /** Validity (default: from an hour ago for two days). */
  notBefore?: Date;
  notAfter?: Date;
  serial?: string;
  /** extendedKeyUsage (default clientAuth). */
  eku?: 'clientAuth' | 'serverAuth';
}

const EC_ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };

async function caSigner(ca: { ca: string; caKey: string }) {
  const x509 = await import('@peculiar/x509');
  x509.cryptoProvider.set(globalThis.crypto);
  const { readFileSync } = await import('node:fs');
  const caCert = new x509.X509Certificate(readFileSync(ca.ca, 'utf8'));
  const der = Buffer.from(readFileSync(ca.caKey, 'utf8').replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
  const signingKey = await globalThis.crypto.subtle.importKey('pkcs8', der, EC_ALG, false, ['sign']);
  return { x509, caCert, signingKey };
}

/**
 * A client certificate (mutual TLS) signed by `ca` (makeCerts' CA, or any CA with a PKCS#8 EC
 * key), with any validity (an expired one too), written as NAME.pem / NAME.key in ca.dir.
 */
export async function makeClientCert(ca: { dir: string; ca: string; caKey: string }, o: ClientCertOptions): Promise<{ cert: string; key: string; serial: string }> {
  const { x509, caCert, signingKey } = await caSigner(ca);
  const keys = (await globalThis.crypto.subtle.generateKey(EC_ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
  const now = Date.now();
  const serial = o.serial ?? Buffer.from(globalThis.crypto.getRandomValues(new Uint8Array(8))).toString('hex').replace(/^0/, '1');
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial,
    subject: o.subject ?? `CN=${o.name}`,
    issuer: caCert.subjectName,
    notBefore: o.notBefore ?? new Date(now - 3600_000),
    notAfter: o.notAfter ?? new Date(now + 2 * 86_400_000),
    signingAlgorithm: EC_ALG,
    publicKey: keys.publicKey,
    signingKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([o.eku === 'serverAuth' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth]),
      ...(o.dns ? [new x509.SubjectAlternativeNameExtension(o.dns.map((value) => ({ type: 'dns' as const, value })))] : []),
    ],
  });
  const pkcs8 = Buffer.from(await globalThis.crypto.subtle.exportKey('pkcs8', keys.privateKey)).toString('base64');
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.match(/.{1,64}/g)!.join('\n')}\n-----END PRIVATE KEY-----\n`;
  const certPath = join(ca.dir, `${o.name}.pem`);
  const keyPath = join(ca.dir, `${o.name}.key`);
  writeFileSync(certPath, cert.toString('pem') + '\n');
  writeFileSync(keyPath, keyPem, { mode: 0o600 });
  return { cert: certPath, key: keyPath, serial };
}

/** A CRL (PEM) signed by `ca`, revoking `serials` (hex), written to ca.dir/NAME. */
export async function makeCrl(ca: { dir: string; ca: string; caKey: string }, name: string, serials: string[]): Promise<string> {
  const { x509, caCert, signingKey } = await caSigner(ca);
  const now = Date.now();
  const crl = await x509.X509CrlGenerator.create({
    issuer: caCert.subjectName,
    thisUpdate: new Date(now - 60_000),
    nextUpdate: new Date(now + 86_400_000),
    entries: serials.map((serialNumber) => ({ serialNumber, revocationDate: new Date(now - 60_000) })),
    signingAlgorithm: EC_ALG,
    signingKey,
  });
  const path = join(ca.dir, name);
  writeFileSync(path, crl.toString('pem') + '\n');
  return path;
}
