/**
 * TLS material: PEM files, or an in-memory self-signed certificate when none are given, and the
 * client-side check of a server certificate against a CA/cert file (chain, validity, host/IP,
 * CA constraints of every issuer). @peculiar/x509 reads the extensions node:crypto does not
 * expose (basicConstraints' pathLenConstraint, keyUsage).
 */
import { readFileSync, statSync } from 'node:fs';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { isIP } from 'node:net';
import { createRequire } from 'node:module';
import type * as Peculiar from '@peculiar/x509';

// @peculiar/x509 takes hundreds of milliseconds to load: required on the first CA check of a
// chain, not by every process that imports this file (`qhcp status` without a CA never needs it).
let peculiar: typeof Peculiar | undefined;
const x509 = (): typeof Peculiar => (peculiar ??= createRequire(import.meta.url)('@peculiar/x509') as typeof Peculiar);
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
export async function loadServerTls(opts: { certFile?: string; keyFile?: string; host?: string; names?: { cert: string; key: string } }): Promise<ServerTls> {
  const names = opts.names ?? { cert: '-cert-file', key: '-key-file' };
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
    throw new LocalError('QHCP_ERR_TLS_FILE', `${names.cert} and ${names.key} go together: ${opts.certFile ? names.key : names.cert} is missing`);
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
 * `cert` names `issuer` as its issuer and carries its signature. (Not X509Certificate.checkIssued,
 * which also folds in keyUsage: what an issuer may do is judged apart, with a reason, below.)
 */
function signedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  return cert.issuer === issuer.subject && cert.verify(issuer.publicKey);
}

/**
 * Why `cert` may not issue certificates, or undefined when it may: as `openssl verify` checks an
 * issuer, basicConstraints must say CA:TRUE (a self-signed version 1 certificate with no
 * extensions counts as a CA, the legacy rule), keyUsage, when present, must allow keyCertSign,
 * and a pathLenConstraint must allow the `below` CA certificates between it and the leaf.
 */
export function issuerProblem(cert: X509Certificate, below: number): string | undefined {
  const name = cert.subject.replace(/\n/g, ',');
  const { X509Certificate: PeculiarCertificate, BasicConstraintsExtension, KeyUsagesExtension, KeyUsageFlags } = x509();
  let parsed: Peculiar.X509Certificate;
  try {
    parsed = new PeculiarCertificate(cert.raw);
  } catch (e) {
    return `certificate ${name} does not parse: ${errorText(e)}`;
  }
  const bc = parsed.getExtension(BasicConstraintsExtension);
  if (!bc) {
    if (parsed.extensions.length === 0 && cert.checkIssued(cert) && cert.verify(cert.publicKey)) return undefined;
    return `certificate ${name} is not a CA (no basicConstraints) but issued another certificate in the chain`;
  }
  if (!bc.ca) return `certificate ${name} is not a CA (basicConstraints CA:FALSE) but issued another certificate in the chain`;
  if (bc.pathLength !== undefined && below > bc.pathLength) return `certificate ${name} allows ${bc.pathLength} CA certificates below it (pathLenConstraint), the chain has ${below}`;
  const ku = parsed.getExtension(KeyUsagesExtension);
  if (ku && (ku.usages & KeyUsageFlags.keyCertSign) === 0) return `certificate ${name} may not sign certificates (keyUsage lacks keyCertSign)`;
  return undefined;
}

/** Why a chain is refused: the kind lets an auth plugin send its own wire code (plugins/auth/mtls.ts). */
export interface ChainProblem {
  kind: 'none' | 'malformed' | 'expired' | 'not-yet-valid' | 'untrusted';
  text: string;
}

/** A certificate's subject on one line ("CN=lb1,O=Example"). */
export const subjectText = (c: X509Certificate): string => c.subject.replace(/\n/g, ',');

/** The chain (DER, leaf first) parsed; undefined when a certificate does not parse. */
export function parseChain(chainDer: readonly Uint8Array[]): X509Certificate[] | undefined {
  try {
    return chainDer.map((d) => new X509Certificate(Buffer.from(d)));
  } catch {
    return undefined;
  }
}

/** The CA certificates of a PEM bundle (or a pinned certificate). */
export const caCertificates = pemBlocks;

/**
 * Why a peer's chain is not trusted, or undefined when it is: every certificate valid now, and
 * either the leaf itself one of the CA certificates (a pinned certificate) or chained through
 * the given intermediates to one of them, each issuer on the way allowed to issue
 * (issuerProblem), as `openssl verify` judges it. The same rules for a server's chain (checked
 * by a load balancer) and a load balancer's client certificate (checked by the mtls plugin).
 */
export function chainProblem(chain: readonly X509Certificate[], cas: readonly X509Certificate[], now = new Date()): ChainProblem | undefined {
  const leaf = chain[0];
  if (!leaf) return { kind: 'none', text: 'no certificate presented' };
  for (const c of chain) {
    if (now < new Date(c.validFrom)) return { kind: 'not-yet-valid', text: `certificate ${subjectText(c)} is not valid before ${c.validFrom}` };
    if (now > new Date(c.validTo)) return { kind: 'expired', text: `certificate ${subjectText(c)} expired ${c.validTo}` };
  }
  // A pinned certificate: the leaf itself is what the operator trusts.
  if (cas.some((ca) => ca.raw.equals(leaf.raw))) return undefined;
  const untrusted = (text: string): ChainProblem => ({ kind: 'untrusted', text });
  for (let i = 0; i < chain.length; i++) {
    const c = chain[i]!;
    // i CA certificates sit between the next issuer and the leaf (the leaf is not one).
    if (i > 0 && cas.some((ca) => ca.raw.equals(c.raw))) return undefined;
    const anchor = cas.find((ca) => signedBy(c, ca));
    if (anchor) {
      const p = issuerProblem(anchor, i);
      return p === undefined ? undefined : untrusted(p);
    }
    const next = chain[i + 1];
    if (!next || !signedBy(c, next)) break;
    const problem = issuerProblem(next, i);
    if (problem) return untrusted(problem);
  }
  return untrusted('certificate is not signed by the given CA');
}

/**
 * Why the peer's chain is not trusted for `serverName`, or undefined when it is: chainProblem,
 * and the leaf naming the host name or IP.
 */
export function checkServerChain(chainDer: Uint8Array[], caPem: string, serverName: string, now = new Date()): string | undefined {
  if (chainDer.length === 0) return 'server sent no certificate';
  const chain = parseChain(chainDer);
  if (!chain) return 'server certificate does not parse';
  const leaf = chain[0]!;
  const problem = chainProblem(chain, pemBlocks(caPem), now);
  // Validity is named before the host name, the host name before the chain.
  if (problem && problem.kind !== 'untrusted') return problem.text;
  const hostOk = isIP(serverName) ? leaf.checkIP(serverName) !== undefined : leaf.checkHost(serverName) !== undefined;
  if (!hostOk) return `certificate does not name ${serverName}`;
  return problem?.text;
}
