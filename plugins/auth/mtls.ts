/**
 * mtls: load balancers prove themselves to servers with a client certificate (mutual TLS), for
 * deployments that want no bearer tokens at all.
 *
 * Load balancer: presents `certFile`/`keyFile` in every QUIC handshake with a server (the `tls`
 * hook). Server: asks every load balancer for a certificate (the `tls` hook) and judges the chain
 * it presented at HELLO (the `verify` hook, the same verdict path as jwt): chained to `caFile`
 * with every issuer allowed to issue (the CA constraints core/transport/tls.ts applies to servers,
 * as `openssl verify` does), valid now, meant for client authentication, one of the allowed
 * names or subjects when those are given, and not revoked (a CRL signed by the CA, or a list of
 * serial numbers). Each refusal has its own wire code and reason (docs/plugins-builtin.md, "mtls").
 *
 * Written with definePlugin, as a plugin outside this repository would be.
 */
import { readFileSync, statSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { createRequire } from 'node:module';
import type * as Peculiar from '@peculiar/x509';
import { definePlugin } from '../../core/plugin/define.ts';
import { warnIfReadableByOthers } from '../../core/util/key-file.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { ConfigError, LocalError, errorText, type WireErrorName } from '../../core/errors.ts';
import type { AuthVerdict, CoreLike } from '../../core/plugin/hooks.ts';
import { caCertificates, chainProblem, checkPair, parseChain, readPem, subjectText } from '../../core/transport/tls.ts';

const NAME = 'mtls';
// Loaded on first use: only a server with names to match or a CRL needs it.
let peculiar: typeof Peculiar | undefined;
const x509 = (): typeof Peculiar => (peculiar ??= createRequire(import.meta.url)('@peculiar/x509') as typeof Peculiar);

const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const ANY_EKU = '2.5.29.37.0';
/** A CRL file is looked at (mtime) at most this often; a changed file is read again. */
const CRL_RECHECK_MS = 1000;

const pattern = { type: 'string', minLength: 1, maxLength: 512 } as const;

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    caFile: { type: 'string', minLength: 1, description: 'server: CA certificate(s) (PEM) a load balancer\'s certificate must chain to; a single leaf certificate here pins it' },
    certFile: { type: 'string', minLength: 1, description: 'load balancer: its client certificate (PEM)' },
    keyFile: { type: 'string', minLength: 1, description: 'load balancer: the private key (PEM) of certFile' },
    allowedNames: {
      type: 'array',
      items: pattern,
      maxItems: 1000,
      description: 'server: accept only certificates with a subjectAltName (DNS, IP, URI, e-mail) or subject CN matching one of these patterns (case-insensitive; `*` matches any run of characters except `.`, `,` and `/`). Default: any name',
    },
    allowedSubjects: {
      type: 'array',
      items: pattern,
      maxItems: 1000,
      description: 'server: accept only certificates whose subject, written `CN=lb1,O=Example`, matches one of these patterns (same syntax). Default: any subject',
    },
    crlFile: { type: 'string', minLength: 1, description: 'server: certificate revocation list(s) (PEM or DER) signed by a CA of caFile; read again when the file changes' },
    revokedSerials: {
      type: 'array',
      items: { type: 'string', pattern: '^[0-9A-Fa-f:]{1,128}$' },
      maxItems: 100_000,
      description: 'server: serial numbers (hex, colons allowed) refused as revoked',
    },
    requireClientAuth: { type: 'boolean', default: true, description: 'server: a certificate with an extendedKeyUsage must list clientAuth (as `openssl verify -purpose sslclient`)' },
  },
} as const;

export type MtlsOptions = FromSchema<typeof schema>;
type Options = MtlsOptions;

/** Serial numbers compared as lowercase hex without colons or leading zeros. */
export const normalizeSerial = (s: string): string => s.replace(/:/g, '').toLowerCase().replace(/^0+(?=.)/, '');

/** A name pattern as an anchored, case-insensitive RegExp (`*`: any run of characters but `.`, `,`, `/`). */
export function namePattern(p: string): RegExp {
  const body = p
    .split('*')
    .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
    .join('[^.,/]*');
  return new RegExp(`^${body}$`, 'i');
}

/** One CRL as loaded: who issued it and the serials it revokes. */
interface Crl {
  issuer: string;
  serials: Set<string>;
  nextUpdate: Date | undefined;
}

/** The server-side policy, built at apply. */
export class ClientCertPolicy {
  private readonly cas: X509Certificate[];
  private readonly names: RegExp[] | undefined;
  private readonly subjects: RegExp[] | undefined;
  private readonly serials: Set<string>;
  crls: Crl[] = [];

  constructor(
    caPem: string,
    private readonly o: Options,
  ) {
    this.cas = caCertificates(caPem);
    if (this.cas.length === 0) throw new ConfigError([`plugin mtls: caFile ${o.caFile} holds no certificate`]);
    this.names = o.allowedNames?.map(namePattern);
    this.subjects = o.allowedSubjects?.map(namePattern);
    this.serials = new Set((o.revokedSerials ?? []).map(normalizeSerial));
  }

  /** Reads CRLs (PEM blocks or one DER), each verified against a CA of caFile. @throws ConfigError */
  async loadCrls(bytes: Buffer, file: string): Promise<Crl[]> {
    const { X509Crl, X509Certificate: PCert } = x509();
    const text = bytes.toString('latin1');
    const blocks = text.includes('-----BEGIN X509 CRL-----') ? (text.match(/-----BEGIN X509 CRL-----[\s\S]+?-----END X509 CRL-----/g) ?? []) : [bytes];
    const out: Crl[] = [];
    for (const b of blocks) {
      let crl: Peculiar.X509Crl;
      try {
        crl = typeof b === 'string' ? new X509Crl(b) : new X509Crl(new Uint8Array(b));
      } catch (e) {
        throw new ConfigError([`plugin mtls: crlFile ${file}: not a CRL (PEM "X509 CRL" or DER): ${errorText(e)}`]);
      }
      let signed = false;
      for (const ca of this.cas) {
        const pca = new PCert(ca.raw);
        if (pca.subject !== crl.issuer) continue;
        try {
          if (await crl.verify({ publicKey: pca.publicKey })) signed = true;
        } catch {
          /* another CA of the same name may have signed it */
        }
        if (signed) break;
      }
      if (!signed) throw new ConfigError([`plugin mtls: crlFile ${file}: the CRL of ${crl.issuer} is not signed by a CA in caFile`]);
      out.push({ issuer: crl.issuer, serials: new Set(crl.entries.map((e) => normalizeSerial(e.serialNumber))), nextUpdate: crl.nextUpdate });
    }
    return out;
  }

  /** The verdict on a presented chain (DER, leaf first). Never throws; reasons name no secret. */
  judge(chainDer: readonly Uint8Array[], now = new Date()): AuthVerdict {
    if (chainDer.length === 0) return deny('AUTH_REQUIRED', 'this server requires a client certificate (mtls) and none was presented');
    const chain = parseChain(chainDer);
    if (!chain) return deny('AUTH_INVALID', 'client certificate does not parse');
    const leaf = chain[0]!;
    const who = subjectText(leaf);
    const problem = chainProblem(chain, this.cas, now);
    if (problem) {
      const kind: WireErrorName = problem.kind === 'expired' ? 'AUTH_EXPIRED' : problem.kind === 'not-yet-valid' ? 'AUTH_NOT_YET_VALID' : 'AUTH_BAD_SIGNATURE';
      return deny(kind, `client ${problem.text}`);
    }
    const revoked = this.revoked(chain);
    if (revoked) return deny('AUTH_REVOKED', `client certificate ${subjectText(revoked)} (serial ${revoked.serialNumber}) is revoked`);
    const eku = leaf.keyUsage;
    if (this.o.requireClientAuth && eku && eku.length > 0 && !eku.includes(CLIENT_AUTH) && !eku.includes(ANY_EKU)) {
      return deny('AUTH_BAD_CLAIM', `client certificate ${who} is not for client authentication (extendedKeyUsage lacks clientAuth)`);
    }
    const names = identities(leaf);
    if (this.subjects && !this.subjects.some((r) => r.test(who))) return deny('AUTH_BAD_CLAIM', `client certificate subject ${who} is not allowed (allowedSubjects)`);
    if (this.names && !names.some((n) => this.names!.some((r) => r.test(n)))) {
      return deny('AUTH_BAD_CLAIM', `client certificate names ${names.slice(0, 8).join(', ') || '(none)'} match no allowed name (allowedNames)`);
    }
    const expiresAt = Math.min(...chain.map((c) => new Date(c.validTo).getTime()));
    return { ok: true, subject: names[0] ?? who, expiresAt };
  }

  /** The first certificate of the chain a CRL or the serial list revokes. */
  private revoked(chain: readonly X509Certificate[]): X509Certificate | undefined {
    for (const c of chain) {
      if (this.cas.some((ca) => ca.raw.equals(c.raw))) break;
      const serial = normalizeSerial(c.serialNumber);
      if (this.serials.has(serial)) return c;
      if (this.crls.length > 0) {
        const issuer = new (x509().X509Certificate)(c.raw).issuer;
        if (this.crls.some((crl) => crl.issuer === issuer && crl.serials.has(serial))) return c;
      }
    }
    return undefined;
  }
}

/** The names a certificate answers to: subjectAltName entries (DNS, IP, URI, e-mail), then the subject CN. */
export function identities(cert: X509Certificate): string[] {
  const out: string[] = [];
  try {
    const { X509Certificate: PCert, SubjectAlternativeNameExtension } = x509();
    const san = new PCert(cert.raw).getExtension(SubjectAlternativeNameExtension);
    for (const n of san?.names.items ?? []) if (['dns', 'ip', 'url', 'email'].includes(n.type)) out.push(n.value);
  } catch {
    /* no names from an extension that does not parse */
  }
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1];
  if (cn) out.push(cn);
  return out;
}

function deny(kind: WireErrorName, reason: string): AuthVerdict {
  return { ok: false, kind, reason: reason.slice(0, 400) };
}

function fileError(e: unknown, option: string): ConfigError {
  return new ConfigError([`plugin mtls: ${option}: ${e instanceof LocalError ? e.message : errorText(e)}`]);
}

async function applyServer(core: CoreLike, o: Options): Promise<void> {
  if (!o.caFile) throw new ConfigError(['plugin mtls: a server verifies load balancers\' certificates and needs caFile']);
  let caPem: string;
  try {
    caPem = readPem(core.resolvePath(o.caFile), 'certificate');
  } catch (e) {
    throw fileError(e, 'caFile');
  }
  const policy = new ClientCertPolicy(caPem, o);
  let refreshCrl = async (): Promise<void> => {};
  if (o.crlFile) {
    const file = core.resolvePath(o.crlFile);
    let mtime = -1;
    let lastLook = 0;
    const read = async (): Promise<void> => {
      const st = statSync(file);
      if (st.mtimeMs === mtime) return;
      policy.crls = await policy.loadCrls(readFileSync(file), file);
      mtime = st.mtimeMs;
      for (const c of policy.crls) if (c.nextUpdate && c.nextUpdate < new Date()) core.logger.warn('mtls: a CRL is past its nextUpdate; publish a fresh one', { file, issuer: c.issuer, nextUpdate: c.nextUpdate.toISOString() });
    };
    try {
      await read();
    } catch (e) {
      throw e instanceof ConfigError ? e : new ConfigError([`plugin mtls: crlFile ${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? errorText(e)})`]);
    }
    // A CRL replaced on disk is taken at the next HELLO; one that fails to load leaves the last good one.
    refreshCrl = async () => {
      if (Date.now() - lastLook < CRL_RECHECK_MS) return;
      lastLook = Date.now();
      try {
        await read();
      } catch (e) {
        core.logger.limited('mtls-crl', 'mtls: cannot reload the CRL; the previous one stays', { file, error: e instanceof ConfigError ? e.message : errorText(e) });
      }
    };
  }
  core.hooks.tls.tap(NAME, (s) => ({ ...s, requestClientCert: true }));
  // Stage -10: judged before any other auth plugin, so a token can never stand in for the certificate.
  core.hooks.verify.tapPromise({ name: NAME, stage: -10 }, async (req) => {
    if (req.role !== 'checker') return undefined;
    await refreshCrl();
    const verdict = policy.judge(req.certificates ?? []);
    // Accepted here, and another auth plugin follows (jwt): it judges too (both must accept).
    if (verdict.ok && core.hooks.verify.taps.length > 1) return undefined;
    return verdict;
  });
  core.logger.info('mtls: load balancers must present a client certificate', {
    ca: core.resolvePath(o.caFile),
    ...(o.allowedNames ? { names: o.allowedNames.join(',') } : {}),
    ...(o.allowedSubjects ? { subjects: o.allowedSubjects.join(';') } : {}),
    ...(o.crlFile ? { crl: core.resolvePath(o.crlFile) } : {}),
    ...(o.revokedSerials ? { revoked: o.revokedSerials.length } : {}),
  });
}

function applyLoadBalancer(core: CoreLike, o: Options): void {
  if (!o.certFile || !o.keyFile) throw new ConfigError(['plugin mtls: a load balancer presents a client certificate and needs certFile and keyFile']);
  const certFile = core.resolvePath(o.certFile);
  const keyFile = core.resolvePath(o.keyFile);
  let cert: string;
  let key: string;
  try {
    cert = readPem(certFile, 'certificate');
    key = readPem(keyFile, 'key');
    checkPair(cert, key, certFile, keyFile);
  } catch (e) {
    throw fileError(e, 'certFile/keyFile');
  }
  warnIfReadableByOthers(keyFile, 'mtls', core.logger);
  core.hooks.tls.tap(NAME, (s) => ({ ...s, clientCert: { cert, key } }));
  const leaf = new X509Certificate(cert);
  core.logger.info('mtls: presenting a client certificate to servers', { subject: subjectText(leaf), expires: leaf.validTo });
}

export default definePlugin({
  name: NAME,
  family: 'auth',
  roles: ['server', 'loadbalancer'],
  schema,
  apply(core, options) {
    return core.role === 'loadbalancer' ? applyLoadBalancer(core, options) : applyServer(core, options);
  },
});
