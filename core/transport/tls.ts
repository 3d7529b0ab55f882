/**
 * TLS material: PEM files, or an in-memory self-signed certificate when none are given, and the
 * client-side check of a server certificate against a CA/cert file (chain, validity, host/IP).
 */
import { readFileSync, statSync } from 'node:fs';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { isIP } from 'node:net';
import { LocalError, errorText } from '../errors.ts';

export interface ServerTls {
  cert: string;
  key: string;
  /** True when the certificate was made at start-up (no files given). */
  generated: boolean;
  /** Problems worth a warning at start-up (a private key others can read). */
  warnings: string[];
}

/** Reads a PEM file, checking it holds the kind of block expected. @throws LocalError QHCP_ERR_TLS_FILE */
export function readPem(file: string, what: 'certificate' | 'key'): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : errorText(e);
    throw new LocalError('QHCP_ERR_TLS_FILE', `cannot read ${what} file ${file}: ${why}`);
  }
  const marker = what === 'certificate' ? /-----BEGIN CERTIFICATE-----/ : /-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----/;
  if (!marker.test(text)) {
    throw new LocalError('QHCP_ERR_TLS_FILE', `${what} file ${file} holds no PEM ${what}`);
  }
  if (what === 'certificate') {
    try {
      new X509Certificate(text);
    } catch (e) {
      throw new LocalError('QHCP_ERR_TLS_FILE', `certificate file ${file} does not parse: ${errorText(e)}`);
    }
  }
  return text;
}

/** A fresh self-signed EC certificate for localhost, loopback and the given extra names. */
export async function selfSigned(extraNames: string[] = []): Promise<{ cert: string; key: string }> {
  const names = new Set(['localhost', '127.0.0.1', '::1', ...extraNames.filter((n) => n && n !== '0.0.0.0' && n !== '::')]);
  const altNames = [...names].map((n) => (isIP(n) ? { type: 7 as const, ip: n } : { type: 2 as const, value: n }));
  // Loaded only when a certificate is made (no files given): `qhcp status` never pays for it.
  const { generate } = await import('selfsigned');
  const pems = await generate([{ name: 'commonName', value: 'qhcp' }], {
    keyType: 'ec',
    algorithm: 'sha256',
    days: 365,
    extensions: [
      { name: 'basicConstraints', cA: true },
      { name: 'keyUsage', digitalSignature: true, keyCertSign: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames },
    ],
  } as Parameters<typeof generate>[1]);
  return { cert: pems.cert, key: pems.private };
}

/**
 * The server's certificate and key: both files, or neither (self-signed in memory).
 * @throws LocalError QHCP_ERR_TLS_FILE
 */
export async function loadServerTls(opts: { certFile?: string; keyFile?: string; host?: string }): Promise<ServerTls> {
  if (opts.certFile && opts.keyFile) {
    const cert = readPem(opts.certFile, 'certificate');
    const key = readPem(opts.keyFile, 'key');
    checkPair(cert, key, opts.certFile, opts.keyFile);
    const warnings: string[] = [];
    const mode = statSync(opts.keyFile).mode & 0o777;
    if (mode & 0o077) warnings.push(`private key file ${opts.keyFile} is readable by others (mode ${mode.toString(8).padStart(3, '0')}); chmod 600 it`);
    return { cert, key, generated: false, warnings };
  }
  if (opts.certFile || opts.keyFile) {
    throw new LocalError('QHCP_ERR_TLS_FILE', `-cert-file and -key-file go together: ${opts.certFile ? '-key-file' : '-cert-file'} is missing`);
  }
  return { ...(await selfSigned(opts.host ? [opts.host] : [])), generated: true, warnings: [] };
}

/**
 * A certificate an agent may serve: its key is the one given, and it is valid now. An expired
 * (or not yet valid) certificate is an error rather than a warning: every load balancer that
 * verifies it would fail every check, which is worse than not starting.
 * @throws LocalError QHCP_ERR_TLS_FILE
 */
export function checkPair(certPem: string, keyPem: string, certFile: string, keyFile: string, now = new Date()): void {
  const cert = new X509Certificate(certPem);
  let key;
  try {
    key = createPrivateKey(keyPem);
  } catch (e) {
    throw new LocalError('QHCP_ERR_TLS_FILE', `key file ${keyFile} does not parse: ${errorText(e)}`);
  }
  if (!cert.checkPrivateKey(key)) throw new LocalError('QHCP_ERR_TLS_FILE', `key file ${keyFile} does not match certificate ${certFile} (a different key pair)`);
  if (now > new Date(cert.validTo)) throw new LocalError('QHCP_ERR_TLS_FILE', `certificate ${certFile} expired ${cert.validTo}`);
  if (now < new Date(cert.validFrom)) throw new LocalError('QHCP_ERR_TLS_FILE', `certificate ${certFile} is not valid before ${cert.validFrom}`);
}

function pemBlocks(pem: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return blocks.map((b) => new X509Certificate(b));
}

/**
 * Why the peer's chain is not trusted for `serverName`, or undefined when it is. Trusted means:
 * leaf valid now, matching the host name or IP, and either itself one of the CA certificates
 * (a pinned self-signed certificate) or chained through the given intermediates to one of them.
 */
export function checkServerChain(chainDer: Uint8Array[], caPem: string, serverName: string, now = new Date()): string | undefined {
  if (chainDer.length === 0) return 'server sent no certificate';
  let chain: X509Certificate[];
  try {
    chain = chainDer.map((d) => new X509Certificate(Buffer.from(d)));
  } catch (e) {
    return `server certificate does not parse: ${errorText(e)}`;
  }
  const leaf = chain[0]!;
  const cas = pemBlocks(caPem);
  for (const c of chain) {
    if (now < new Date(c.validFrom)) return `certificate ${c.subject.replace(/\n/g, ',')} is not valid before ${c.validFrom}`;
    if (now > new Date(c.validTo)) return `certificate ${c.subject.replace(/\n/g, ',')} expired ${c.validTo}`;
  }
  const hostOk = isIP(serverName) ? leaf.checkIP(serverName) !== undefined : leaf.checkHost(serverName) !== undefined;
  if (!hostOk) return `certificate does not name ${serverName}`;
  for (let i = 0; i < chain.length; i++) {
    const c = chain[i]!;
    if (cas.some((ca) => ca.raw.equals(c.raw))) return undefined;
    const issuer = cas.find((ca) => c.checkIssued(ca) && c.verify(ca.publicKey));
    if (issuer) return undefined;
    const next = chain[i + 1];
    if (!next || !c.checkIssued(next) || !c.verify(next.publicKey)) break;
  }
  return 'certificate is not signed by the given CA';
}
