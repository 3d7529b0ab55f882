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
