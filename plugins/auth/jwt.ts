/**
 * jwt: load balancers prove themselves to servers with short-lived JSON Web Tokens (jose).
 *
 * Load balancer (`credentials` hook): signs a fresh token for each connection, HS256 with a
 * shared secret or EdDSA/ES256 with a private key, carrying iss, aud, sub (its node name), iat,
 * exp = iat + ttlSeconds and a random jti. Server (`verify` hook): checks size, algorithm
 * (never `none`), signature (secret, public key or JWKS file), exp/nbf/iat with clock
 * tolerance, issuer and audience, and maps each failure to its own wire code (AUTH_*), which
 * the load balancer shows in its status as e.g. `AUTH_EXPIRED: token expired`.
 *
 * Key material comes from files or environment variables named in the config, never from
 * flags. Each role loads only what it needs (a server never needs the private key).
 */
import { readFileSync } from 'node:fs';
import { hostname, networkInterfaces } from 'node:os';
import { createPrivateKey, createPublicKey, randomUUID, type KeyObject } from 'node:crypto';
import { dirname, resolve } from 'node:path';
import { SignJWT, jwtVerify, decodeProtectedHeader, createLocalJWKSet, type JSONWebKeySet, type JWTVerifyGetKey } from 'jose';
import { ConfigError, errorText, type WireErrorName } from '../../core/errors.ts';
import type { AuthVerdict, CoreLike } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import { warnIfReadableByOthers } from '../../core/util/key-file.ts';

const PLUGIN_NAME = 'jwt';

export type JwtAlg = 'HS256' | 'EdDSA' | 'ES256';
export const JWT_ALGS = ['HS256', 'EdDSA', 'ES256'] as const satisfies readonly JwtAlg[];

/** RFC 7518 3.2: an HS256 key at least as long as the hash. */
export const MIN_SECRET_BYTES = 32;

type SignKey = Uint8Array | KeyObject;
type VerifyKey = Uint8Array | KeyObject | JWTVerifyGetKey;

const file = (what: string) => ({ type: 'string', minLength: 1, description: what }) as const;

const schema = {
type: 'object',
  additionalProperties: false,
  properties: {
    alg: { enum: JWT_ALGS, default: 'HS256', description: 'signing algorithm; the only one a server accepts' },
    secretFile: file('HS256: file holding the shared secret (both roles)'),
    secretEnv: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$', description: 'HS256: environment variable holding the shared secret (both roles)' },
    privateKeyFile: file('EdDSA/ES256: PEM private key (load balancer)'),
    publicKeyFile: file('EdDSA/ES256: PEM public key (server)'),
    jwksFile: file('server: JSON Web Key Set file of accepted keys (instead of a secret or public key)'),
    kid: { type: 'string', minLength: 1, maxLength: 256, description: 'key id put in the token header (selects the key in a JWKS)' },
    issuer: { type: 'string', minLength: 1, default: 'qhcp-loadbalancer', description: 'iss the load balancer signs and the server requires' },
    audience: {
      type: 'string',
      minLength: 1,
      description: 'a fixed aud for every agent (not recommended: a token captured by one agent is then accepted by all). Default: per agent: the load balancer signs aud = the agent address it dials (host:port), an agent accepts only its own addresses and node name',
    },
    subject: { type: 'string', minLength: 1, description: 'sub the load balancer signs (default: its node name)' },
    ttlSeconds: { type: 'integer', minimum: 1, maximum: 86_400, default: 60, description: 'lifetime of a signed token' },
    clockToleranceSeconds: { type: 'integer', minimum: 0, maximum: 600, default: 30, description: 'clock skew allowed when checking exp, nbf and iat' },
    maxTokenAgeSeconds: { type: 'integer', minimum: 1, maximum: 31_536_000, default: 600, description: 'server: reject tokens issued (iat) longer ago than this' },
    maxTokenBytes: { type: 'integer', minimum: 64, maximum: 16_384, default: 4096, description: 'server: longer tokens are rejected unparsed' },
    required: { type: 'boolean', default: true, description: 'server: reject a HELLO without a token (false: accept it, still reject bad ones)' },
    verifyQueries: { type: 'boolean', default: false, description: 'load balancer: query clients (qhcp status/pick) must present a token too, with aud queryAudience (qhcp status --token-file)' },
    queryAudience: { type: 'string', minLength: 1, default: 'qhcp-query', description: 'the aud of query clients\' tokens' },
    maxReplayCache: { type: 'integer', minimum: 100, maximum: 10_000_000, default: 100_000, description: 'token ids (jti) remembered until their expiry, so a replayed token is refused; when full, the oldest is forgotten' },
  },
} as const;

export type JwtOptions = FromSchema<typeof schema>;

/** The plugin's body: signs (load balancer) and verifies (server, and query clients) tokens. */
export class JwtAuth {
  private signKey: SignKey | undefined;
  private verifyKey: VerifyKey | undefined;
  /** The audiences this process accepts (an agent: its own names; set at apply). */
  private accepted: () => string[] = () => [this.opts.audience ?? 'qhcp-server'];
  /** Token ids seen and when they expire (epoch ms), oldest first: replays are refused. */
  private readonly seen = new Map<string, number>();

  /** Checks that the options name key material that fits the algorithm. @throws Error */
  constructor(private readonly opts: JwtOptions) {
    const o = opts;
    if (o.secretFile && o.secretEnv) throw new Error('jwt: give secretFile or secretEnv, not both');
    if (o.alg === 'HS256') {
      if (o.privateKeyFile || o.publicKeyFile) throw new Error('jwt: privateKeyFile/publicKeyFile are for EdDSA or ES256; HS256 uses secretFile or secretEnv');
      if (!o.secretFile && !o.secretEnv && !o.jwksFile) throw new Error('jwt: HS256 needs a shared secret: secretFile or secretEnv (see docs/plugins-builtin.md, "Generating keys")');
    } else {
      if (o.secretFile || o.secretEnv) throw new Error(`jwt: ${o.alg} signs with a key pair: use privateKeyFile (load balancer) and publicKeyFile or jwksFile (server), not a secret`);
      if (!o.privateKeyFile && !o.publicKeyFile && !o.jwksFile) throw new Error(`jwt: ${o.alg} needs privateKeyFile (load balancer) and/or publicKeyFile or jwksFile (server)`);
    }
  }

  /**
   * Signs a token for a connection from `node` (load balancer) to `audience`: the fixed
   * `audience` option when set, else the agent's address (per-agent audience).
   */
  async sign(node: string, now = Date.now(), audience?: string): Promise<string> {
    if (!this.signKey) throw new Error('jwt: no signing key loaded (not applied on a load balancer)');
    const o = this.opts;
    const iat = Math.floor(now / 1000);
    return new SignJWT({})
      .setProtectedHeader({ alg: o.alg, typ: 'JWT', ...(o.kid ? { kid: o.kid } : {}) })
      .setIssuer(o.issuer)
      .setAudience(o.audience ?? audience ?? 'qhcp-server')
      .setSubject(o.subject ?? node)
      .setIssuedAt(iat)
      .setExpirationTime(iat + o.ttlSeconds)
      .setJti(randomUUID())
      .sign(this.signKey);
  }

  /**
   * The verdict on a HELLO token (server; a load balancer's query port with `audience` the
   * query audience). Never throws; reasons never contain the token. With `once`, a good token's
   * `jti` is remembered until it expires: the same token again is refused (AUTH_BAD_CLAIM, replay).
   */
  async verify(token: string | undefined, now = Date.now(), audience: string | string[] = this.accepted(), once = true): Promise<AuthVerdict> {
    const o = this.opts;
    if (!this.verifyKey) return deny('INTERNAL_ERROR', 'jwt: no verification key loaded');
    if (token === undefined || token === '') {
      return o.required ? deny('AUTH_REQUIRED', 'this server requires a token (jwt) in HELLO') : { ok: true };
    }
    const bytes = Buffer.byteLength(token);
    if (bytes > o.maxTokenBytes) return deny('AUTH_INVALID', `token is ${bytes} bytes; at most ${o.maxTokenBytes} are accepted`);
    let alg: unknown;
    try {
      if (token.split('.').length !== 3) throw new Error('not three parts');
      alg = decodeProtectedHeader(token).alg;
    } catch {
      return deny('AUTH_INVALID', 'token is not a compact JWS (header.payload.signature)');
    }
    if (typeof alg !== 'string' || alg.toLowerCase() === 'none') return deny('AUTH_ALG_REJECTED', 'unsigned tokens (alg "none") are never accepted');
    if (alg !== o.alg) return deny('AUTH_ALG_REJECTED', `alg "${alg.slice(0, 32)}" is not accepted (this server accepts ${o.alg})`);
    try {
      const { payload } = await jwtVerify(token, this.verifyKey as Uint8Array, {
        algorithms: [o.alg],
        issuer: o.issuer,
        audience,
        clockTolerance: o.clockToleranceSeconds,
        maxTokenAge: o.maxTokenAgeSeconds,
        requiredClaims: ['exp', 'iat', 'jti'],
        currentDate: new Date(now),
      });
      const expiresAt = (payload.exp! + o.clockToleranceSeconds) * 1000;
      if (once && !this.remember(String(payload.jti), expiresAt, now)) return deny('AUTH_BAD_CLAIM', 'token already used (jti replayed); every connection needs a fresh token');
      return { ok: true, expiresAt, ...(typeof payload.sub === 'string' ? { subject: payload.sub } : {}) };
    } catch (e) {
      return verdictOf(e);
    }
  }

  /** Records a jti until `expiresAt`; false when it is already there (a replay). Bounded. */
  private remember(jti: string, expiresAt: number, now: number): boolean {
    const prev = this.seen.get(jti);
    if (prev !== undefined && prev > now) return false;
    if (this.seen.size >= this.opts.maxReplayCache) {
      for (const [k, exp] of this.seen) if (exp <= now) this.seen.delete(k);
      while (this.seen.size >= this.opts.maxReplayCache) this.seen.delete(this.seen.keys().next().value!);
    }
    this.seen.delete(jti);
    this.seen.set(jti, expiresAt);
    return true;
  }

  apply(core: CoreLike): void {
    const at = (p: string) => core.resolvePath(p);
    const o = this.opts;
    const aud = o.audience ?? 'per agent (its address)';
    if (core.role === 'loadbalancer') {
      this.signKey = this.loadSignKey(at, core);
      core.hooks.credentials.tapPromise(PLUGIN_NAME, (req) => this.sign(req.node, Date.now(), req.server));
      core.logger.info('jwt: signing a token for each connection', { alg: o.alg, issuer: o.issuer, audience: aud, ttl: `${o.ttlSeconds}s` });
      if (o.verifyQueries) {
        this.verifyKey = this.loadVerifyKey(at, core);
        // An operator's query token (qhcp status --token-file) is used many times until it expires.
        core.hooks.verify.tapPromise(PLUGIN_NAME, (req) => this.verify(req.token, Date.now(), o.queryAudience, false));
        core.logger.info('jwt: query clients must present a valid token', { audience: o.queryAudience });
      }
    } else {
      this.verifyKey = this.loadVerifyKey(at, core);
      if (!o.audience) this.accepted = () => agentNames(core);
      core.hooks.verify.tapPromise(PLUGIN_NAME, (req) => this.verify(req.token));
      if (o.required) core.logger.info('jwt: load balancers must present a valid token', { alg: o.alg, issuer: o.issuer, audience: aud });
      else core.logger.warn('jwt: required is false: a HELLO without a token is ACCEPTED (bad tokens are still rejected)');
    }
  }

  /** @throws ConfigError when this role has no usable signing key */
  private loadSignKey(at: (p: string) => string, core: CoreLike): SignKey {
    const o = this.opts;
    if (o.alg === 'HS256') {
      if (!o.secretFile && !o.secretEnv) throw new ConfigError(['plugin jwt: a load balancer signs tokens and needs the shared secret: set secretFile or secretEnv']);
      return this.loadSecret(at, core);
    }
    if (!o.privateKeyFile) throw new ConfigError([`plugin jwt: a load balancer signs ${o.alg} tokens and needs privateKeyFile`]);
    return loadPem(at(o.privateKeyFile), 'private', o.alg, core);
  }

  /** @throws ConfigError when this role has no usable verification key */
  private loadVerifyKey(at: (p: string) => string, core: CoreLike): VerifyKey {
    const o = this.opts;
    if (o.jwksFile) return loadJwks(at(o.jwksFile));
    if (o.alg === 'HS256') return this.loadSecret(at, core);
    if (o.publicKeyFile) return loadPem(at(o.publicKeyFile), 'public', o.alg, core);
    if (o.privateKeyFile) {
      core.logger.warn('jwt: verifying with the public half of privateKeyFile; a server only needs publicKeyFile');
      return loadPem(at(o.privateKeyFile), 'public', o.alg, core);
    }
    throw new ConfigError([`plugin jwt: a server verifies ${o.alg} tokens and needs publicKeyFile or jwksFile`]);
  }

  private loadSecret(at: (p: string) => string, core: CoreLike): Uint8Array {
    const o = this.opts;
    let text: string;
    let where: string;
    if (o.secretFile) {
      where = `secretFile ${at(o.secretFile)}`;
      text = readText(at(o.secretFile), 'secretFile');
      warnIfShared(at(o.secretFile), core);
    } else {
      where = `environment variable ${o.secretEnv}`;
      const v = process.env[o.secretEnv!];
      if (v === undefined || v === '') throw new ConfigError([`plugin jwt: ${where} is not set or empty`]);
      text = v;
    }
    // A trailing newline from `echo`/`openssl ... > file` is not part of the secret.
    const secret = Buffer.from(text.replace(/[\r\n]+$/, ''), 'utf8');
    if (secret.length < MIN_SECRET_BYTES) {
      throw new ConfigError([`plugin jwt: the secret in ${where} is ${secret.length} bytes; HS256 needs at least ${MIN_SECRET_BYTES} (openssl rand -base64 32 > secret)`]);
    }
    return new Uint8Array(secret);
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'auth',
  roles: ['server', 'loadbalancer'],
  schema,
  setup: (options) => new JwtAuth(options),
});

function deny(kind: WireErrorName, reason: string): AuthVerdict {
  return { ok: false, kind, reason };
}

/** Maps a jose verification error to a wire error kind and a reason safe to send and log. */
export function verdictOf(e: unknown): AuthVerdict {
  const err = e as { code?: string; claim?: string; reason?: string };
  switch (err.code) {
    case 'ERR_JWT_EXPIRED':
      return deny('AUTH_EXPIRED', err.claim === 'iat' ? 'token expired (issued too long ago)' : 'token expired');
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
      if (err.reason === 'missing') return deny('AUTH_BAD_CLAIM', `token has no "${err.claim}" claim`);
      if (err.claim === 'nbf') return deny('AUTH_NOT_YET_VALID', 'token not valid yet (nbf is in the future)');
      if (err.claim === 'iat' && err.reason === 'check_failed') return deny('AUTH_NOT_YET_VALID', 'token issued in the future (iat)');
      if (err.claim === 'iss') return deny('AUTH_BAD_CLAIM', 'token issuer (iss) is not accepted');
      if (err.claim === 'aud') return deny('AUTH_BAD_CLAIM', 'token audience (aud) is not this server');
      return deny('AUTH_BAD_CLAIM', `token claim "${err.claim ?? '?'}" is not valid`);
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      return deny('AUTH_BAD_SIGNATURE', 'token signature does not verify');
    case 'ERR_JWKS_NO_MATCHING_KEY':
      return deny('AUTH_BAD_SIGNATURE', 'no key in the key set matches the token (kid/alg)');
    case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS':
      return deny('AUTH_BAD_SIGNATURE', 'token signature does not verify with any matching key');
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
    case 'ERR_JOSE_NOT_SUPPORTED':
      return deny('AUTH_ALG_REJECTED', 'token algorithm is not accepted');
    default:
      return deny('AUTH_INVALID', 'token is malformed');
  }
}

function readText(path: string, option: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError([`plugin jwt: ${option} ${path}: cannot read (${(e as NodeJS.ErrnoException).code ?? errorText(e)})`]);
  }
}

/** A secret or private key readable by group or others deserves a warning (core/util/key-file.ts). */
function warnIfShared(path: string, core: CoreLike): void {
  warnIfReadableByOthers(path, 'jwt', core.logger);
}

/** Loads a PEM key (PKCS#8, SPKI or SEC1 EC) and checks it fits the algorithm. @throws ConfigError */
function loadPem(path: string, want: 'private' | 'public', alg: JwtAlg, core: CoreLike): KeyObject {
  const option = want === 'private' ? 'privateKeyFile' : 'publicKeyFile';
  const pem = readText(path, option);
  let key: KeyObject;
  try {
    key = want === 'private' ? createPrivateKey(pem) : createPublicKey(pem);
  } catch (e) {
    throw new ConfigError([`plugin jwt: ${path}: not a PEM ${want} key (${errorText(e)})`]);
  }
  if (want === 'private' || pem.includes('PRIVATE KEY')) warnIfShared(path, core);
  const type = key.asymmetricKeyType;
  const ok = alg === 'EdDSA' ? type === 'ed25519' : type === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
  if (!ok) {
    const need = alg === 'EdDSA' ? 'an Ed25519 key' : 'an EC P-256 (prime256v1) key';
    const got = type === 'ec' ? `an EC ${key.asymmetricKeyDetails?.namedCurve ?? ''} key` : `a ${type ?? 'secret'} key`;
    throw new ConfigError([`plugin jwt: ${path}: ${alg} needs ${need}, this is ${got}`]);
  }
  return key;
}

/** @throws ConfigError */
function loadJwks(path: string): JWTVerifyGetKey {
  let jwks: JSONWebKeySet;
  try {
    jwks = JSON.parse(readText(path, 'jwksFile')) as JSONWebKeySet;
    return createLocalJWKSet(jwks);
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError([`plugin jwt: jwksFile ${path}: not a JSON Web Key Set ({"keys": [...]}): ${errorText(e)}`]);
  }
}

/**
 * The audiences an agent accepts when no fixed `audience` is configured: its node name, and
 * host:port for the address it listens on (every local interface address, localhost and the
 * host name when it listens on a wildcard address). A token signed for another agent names
 * another address or port and is refused.
 */
export function agentNames(core: CoreLike): string[] {
  const port = core.port;
  const names = [core.node];
  if (!port) return names;
  const ip = core.config.serverIp;
  const hosts = ip === '0.0.0.0' || ip === '::' ? ['localhost', hostname(), ...Object.values(networkInterfaces()).flatMap((l) => (l ?? []).map((a) => a.address))] : [ip];
  for (const h of hosts) names.push(`${h.includes(':') ? `[${h}]` : h}:${port}`);
  return names;
}
