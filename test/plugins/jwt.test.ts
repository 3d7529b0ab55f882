import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CompactSign, SignJWT, exportJWK } from 'jose';
import JwtAuthPlugin from '../../plugins/auth/jwt.ts';
import type { OptionsOf } from '../../core/plugin/define.ts';
import { build } from '../../core/testing/index.ts';
import { ConfigError, WIRE_ERRORS } from '../../core/errors.ts';
import { validateOptions, applyPlugins } from '../../core/plugin/loader.ts';
import type { AuthVerdict } from '../../core/plugin/hooks.ts';
import { fakeCore, type FakeCore } from './fake-core.ts';

const b64url = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
const nowS = () => Math.floor(Date.now() / 1000);

type JwtOptions = OptionsOf<typeof JwtAuthPlugin>;

describe('jwt auth plugin', () => {
  let dir: string;
  let secretFile: string;
  let secret: Uint8Array;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-jwt-'));
    secretFile = join(dir, 'secret');
    writeFileSync(secretFile, randomBytes(32).toString('base64') + '\n', { mode: 0o600 });
    secret = new Uint8Array(Buffer.from(readFileSync(secretFile, 'utf8').trim()));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  function make(options: JwtOptions) {
    // A fixed audience: these unit tests have no agent address (per-agent audiences: test/robustness/audience.test.ts).
    return build(JwtAuthPlugin, { audience: 'qhcp-server', ...options });
  }

  /** A load balancer core and a server core with the plugin applied to each. */
  async function pair(lbOpts: JwtOptions, serverOpts: JwtOptions = lbOpts): Promise<{ lb: FakeCore; server: FakeCore; token: () => Promise<string>; check: (t: string | undefined) => Promise<AuthVerdict> }> {
    const lb = fakeCore('loadbalancer', { node: 'lb-1' });
    const server = fakeCore('server');
    await applyPlugins([make(lbOpts)], lb, 2000);
    await applyPlugins([make(serverOpts)], server, 2000);
    return {
      lb,
      server,
      token: async () => (await lb.hooks.credentials.promise({ server: '127.0.0.1:4243', node: 'lb-1' }))!,
      check: async (t) => (await server.hooks.verify.promise({ token: t, node: 'lb-1', remote: '127.0.0.1:5555', role: 'checker' }))!,
    };
  }

  /** A token signed with the test secret, claims as given (defaults: valid for a minute). */
  function hs256(claims: Record<string, unknown> = {}, key: Uint8Array = secret, header: Record<string, unknown> = {}): Promise<string> {
    const iat = nowS();
    return new SignJWT({ iss: 'qhcp-loadbalancer', aud: 'qhcp-server', sub: 'lb-1', iat, exp: iat + 60, jti: randomUUID(), ...claims }).setProtectedHeader({ alg: 'HS256', ...header }).sign(key);
  }

  function keyFiles(kind: 'ed25519' | 'ec', name: string, sec1 = false): { privateKeyFile: string; publicKeyFile: string; publicKey: KeyObject } {
    const { privateKey, publicKey } = kind === 'ec' ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' }) : generateKeyPairSync('ed25519');
    const privateKeyFile = join(dir, `${name}.pem`);
    const publicKeyFile = join(dir, `${name}.pub.pem`);
    writeFileSync(privateKeyFile, privateKey.export({ type: sec1 ? 'sec1' : 'pkcs8', format: 'pem' }) as string, { mode: 0o600 });
    writeFileSync(publicKeyFile, publicKey.export({ type: 'spki', format: 'pem' }) as string);
    return { privateKeyFile, publicKeyFile, publicKey };
  }

  describe('happy paths', () => {
    it('HS256 with a secret file: the load balancer signs, the server accepts and learns the subject', async () => {
      const { token, check, lb, server } = await pair({ secretFile });
      const t = await token();
      expect(t.split('.')).to.have.length(3);
      const payload = JSON.parse(Buffer.from(t.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>;
      expect(payload).to.include({ iss: 'qhcp-loadbalancer', aud: 'qhcp-server', sub: 'lb-1' });
      expect((payload.exp as number) - (payload.iat as number)).to.equal(60);
      expect(await check(t)).to.deep.include({ ok: true, subject: 'lb-1' });
      expect(lb.logged(/signing a token/)).to.have.length(1);
      expect(server.logged(/must present a valid token/)).to.have.length(1);
      // Every connection gets its own token.
      expect(await token()).to.not.equal(t);
    });

    it('HS256 with the secret in an environment variable', async () => {
      process.env.QHCP_TEST_JWT_SECRET = Buffer.from(secret).toString();
      try {
        const { token, check } = await pair({ secretEnv: 'QHCP_TEST_JWT_SECRET' }, { secretFile });
        expect((await check(await token())).ok).to.equal(true);
      } finally {
        delete process.env.QHCP_TEST_JWT_SECRET;
      }
    });

    it('EdDSA (Ed25519) with a private key on the load balancer and the public key on the server', async () => {
      const k = keyFiles('ed25519', 'ed');
      const { token, check } = await pair({ alg: 'EdDSA', privateKeyFile: k.privateKeyFile }, { alg: 'EdDSA', publicKeyFile: k.publicKeyFile });
      const t = await token();
      expect(JSON.parse(Buffer.from(t.split('.')[0]!, 'base64url').toString())).to.include({ alg: 'EdDSA' });
      expect(await check(t)).to.deep.include({ ok: true, subject: 'lb-1' });
    });

    it('ES256 with a SEC1 key (openssl ecparam output); a server given only the private key derives the public one', async () => {
      const k = keyFiles('ec', 'es', true);
      const { token, check, server } = await pair({ alg: 'ES256', privateKeyFile: k.privateKeyFile }, { alg: 'ES256', privateKeyFile: k.privateKeyFile });
      expect((await check(await token())).ok).to.equal(true);
      expect(server.logged(/only needs publicKeyFile/)).to.have.length(1);
    });

    it('verifies against a JWKS file, choosing the key by kid', async () => {
      const k1 = keyFiles('ed25519', 'jwks1');
      const k2 = keyFiles('ed25519', 'jwks2');
      const jwksFile = join(dir, 'jwks.json');
      writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(k1.publicKey)), kid: 'one', alg: 'EdDSA' }, { ...(await exportJWK(k2.publicKey)), kid: 'two', alg: 'EdDSA' }] }));
      const serverOpts: JwtOptions = { alg: 'EdDSA', jwksFile };
      const good = await pair({ alg: 'EdDSA', privateKeyFile: k2.privateKeyFile, kid: 'two' }, serverOpts);
      expect(await good.check(await good.token())).to.deep.include({ ok: true, subject: 'lb-1' });
      const wrongKid = await pair({ alg: 'EdDSA', privateKeyFile: k2.privateKeyFile, kid: 'one' }, serverOpts);
      expect(await wrongKid.check(await wrongKid.token())).to.include({ ok: false, kind: 'AUTH_BAD_SIGNATURE' });
      const unknownKid = await pair({ alg: 'EdDSA', privateKeyFile: k2.privateKeyFile, kid: 'three' }, serverOpts);
      expect(await unknownKid.check(await unknownKid.token())).to.include({ ok: false, kind: 'AUTH_BAD_SIGNATURE' });
    });

    it('accepts the keys the documented openssl commands make', async function () {
      try {
        execFileSync('openssl', ['version'], { stdio: 'ignore' });
      } catch {
        this.skip();
      }
      const sh = (cmd: string) => execFileSync('sh', ['-c', cmd], { cwd: dir, stdio: 'pipe' });
      sh('umask 077 && openssl rand -base64 32 > doc-secret');
      sh('umask 077 && openssl genpkey -algorithm ed25519 -out lb-ed25519.pem && openssl pkey -in lb-ed25519.pem -pubout -out ed25519.pub.pem');
      sh('umask 077 && openssl ecparam -name prime256v1 -genkey -noout -out lb-es256.pem && openssl ec -in lb-es256.pem -pubout -out es256.pub.pem');
      const hs = await pair({ secretFile: join(dir, 'doc-secret') });
      expect((await hs.check(await hs.token())).ok).to.equal(true);
      const ed = await pair({ alg: 'EdDSA', privateKeyFile: join(dir, 'lb-ed25519.pem') }, { alg: 'EdDSA', publicKeyFile: join(dir, 'ed25519.pub.pem') });
      expect((await ed.check(await ed.token())).ok).to.equal(true);
      const es = await pair({ alg: 'ES256', privateKeyFile: join(dir, 'lb-es256.pem') }, { alg: 'ES256', publicKeyFile: join(dir, 'es256.pub.pem') });
      expect((await es.check(await es.token())).ok).to.equal(true);
    });
  });

  describe('rejections (each with its own wire code)', () => {
    let check: (t: string | undefined) => Promise<AuthVerdict>;
    const seen = new Set<string>();
    before(async () => {
      ({ check } = await pair({ secretFile }));
    });

    async function rejects(token: string | undefined, kind: keyof typeof WIRE_ERRORS, reason: RegExp): Promise<void> {
      const v = await check(token);
      expect(v.ok, `${kind}: ${JSON.stringify(v)}`).to.equal(false);
      if (v.ok) return;
      expect(v.kind).to.equal(kind);
      expect(v.reason).to.match(reason);
      if (token) {
        expect(v.reason).to.not.include(token, 'reasons never echo the token');
        const sig = token.split('.')[2] ?? '';
        if (sig.length >= 16) expect(v.reason).to.not.include(sig);
      }
      seen.add(v.kind);
    }

    it('missing token: AUTH_REQUIRED', () => rejects(undefined, 'AUTH_REQUIRED', /requires a token/));

    it('malformed or oversized token: AUTH_INVALID', async () => {
      await rejects('not-a-jwt', 'AUTH_INVALID', /compact JWS/);
      await rejects('a.b', 'AUTH_INVALID', /compact JWS/);
      await rejects('%%%.e30.sig', 'AUTH_INVALID', /compact JWS/);
      // Correctly signed, but the payload is not a JSON claims set.
      await rejects(await new CompactSign(new TextEncoder().encode('not json')).setProtectedHeader({ alg: 'HS256' }).sign(secret), 'AUTH_INVALID', /malformed/);
      await rejects(await hs256({ padding: 'x'.repeat(5000) }), 'AUTH_INVALID', /bytes; at most 4096/);
    });

    it('expired beyond the clock tolerance: AUTH_EXPIRED (within it: accepted)', async () => {
      await rejects(await hs256({ iat: nowS() - 200, exp: nowS() - 100 }), 'AUTH_EXPIRED', /^token expired$/);
      expect((await check(await hs256({ iat: nowS() - 60, exp: nowS() - 10 }))).ok).to.equal(true, '10 s late is within the 30 s tolerance');
      await rejects(await hs256({ iat: nowS() - 3600, exp: nowS() + 60 }), 'AUTH_EXPIRED', /issued too long ago/);
    });

    it('not valid yet: AUTH_NOT_YET_VALID for nbf or iat in the future', async () => {
      await rejects(await hs256({ nbf: nowS() + 120 }), 'AUTH_NOT_YET_VALID', /nbf/);
      await rejects(await hs256({ iat: nowS() + 120, exp: nowS() + 180 }), 'AUTH_NOT_YET_VALID', /iat/);
    });

    it('wrong secret or a tampered payload: AUTH_BAD_SIGNATURE', async () => {
      await rejects(await hs256({}, new Uint8Array(randomBytes(32))), 'AUTH_BAD_SIGNATURE', /signature does not verify/);
      const [h, , s] = (await hs256()).split('.');
      await rejects(`${h}.${b64url({ iss: 'qhcp-loadbalancer', aud: 'qhcp-server', sub: 'admin', iat: nowS(), exp: nowS() + 60 })}.${s}`, 'AUTH_BAD_SIGNATURE', /signature/);
    });

    it('wrong audience or issuer, or no exp: AUTH_BAD_CLAIM', async () => {
      await rejects(await hs256({ aud: 'someone-else' }), 'AUTH_BAD_CLAIM', /audience/);
      await rejects(await hs256({ iss: 'mallory' }), 'AUTH_BAD_CLAIM', /issuer/);
      await rejects(await hs256({ exp: undefined }), 'AUTH_BAD_CLAIM', /"exp"/);
    });

    it('alg none (any case) or another algorithm than configured: AUTH_ALG_REJECTED', async () => {
      const claims = b64url({ iss: 'qhcp-loadbalancer', aud: 'qhcp-server', sub: 'lb-1', iat: nowS(), exp: nowS() + 60 });
      await rejects(`${b64url({ alg: 'none', typ: 'JWT' })}.${claims}.`, 'AUTH_ALG_REJECTED', /alg "none"/);
      await rejects(`${b64url({ alg: 'NoNe' })}.${claims}.`, 'AUTH_ALG_REJECTED', /alg "none"/);
      await rejects(`${b64url({ typ: 'JWT' })}.${claims}.`, 'AUTH_ALG_REJECTED', /alg "none"/);
      await rejects(await new SignJWT({ iss: 'qhcp-loadbalancer', aud: 'qhcp-server', iat: nowS(), exp: nowS() + 60 }).setProtectedHeader({ alg: 'HS512' }).sign(new Uint8Array(randomBytes(64))), 'AUTH_ALG_REJECTED', /HS512.*accepts HS256/);
      const ed = generateKeyPairSync('ed25519');
      await rejects(await new SignJWT({ iss: 'qhcp-loadbalancer', aud: 'qhcp-server', iat: nowS(), exp: nowS() + 60 }).setProtectedHeader({ alg: 'EdDSA' }).sign(ed.privateKey), 'AUTH_ALG_REJECTED', /EdDSA/);
    });

    it('covered every AUTH_* kind a token can fail with, each with a distinct wire code', () => {
      // AUTH_REVOKED is a certificate's (mtls.test.ts); a token is refused as replayed instead.
      const auth = Object.keys(WIRE_ERRORS).filter((k) => k.startsWith('AUTH_') && k !== 'AUTH_REVOKED');
      expect([...seen].sort()).to.deep.equal(auth.sort());
      expect(new Set(auth.map((k) => WIRE_ERRORS[k as keyof typeof WIRE_ERRORS].wire)).size).to.equal(auth.length);
    });

    it('required: false accepts a HELLO without a token but still rejects a bad one', async () => {
      const { check: lenient, server } = await pair({ secretFile }, { secretFile, required: false });
      expect(await lenient(undefined)).to.deep.equal({ ok: true });
      expect(await lenient(await hs256({ aud: 'x' }))).to.include({ ok: false, kind: 'AUTH_BAD_CLAIM' });
      expect(server.logged(/is ACCEPTED/)).to.have.length(1);
    });
  });

  describe('configuration', () => {
    it('refuses options that name no key, or keys that do not fit the algorithm', () => {
      expect(() => make({})).to.throw(/HS256 needs a shared secret/);
      expect(() => make({ secretFile, secretEnv: 'X' })).to.throw(/not both/);
      expect(() => make({ secretFile, privateKeyFile: 'k.pem' })).to.throw(/HS256 uses secretFile/);
      expect(() => make({ alg: 'EdDSA', secretFile })).to.throw(/key pair/);
      expect(() => make({ alg: 'ES256' })).to.throw(/privateKeyFile/);
      expect(() => validateOptions(JwtAuthPlugin, { alg: 'none', secretFile }, 'p')).to.throw(ConfigError, /alg: must be one of "HS256", "EdDSA", "ES256"/);
      expect(() => validateOptions(JwtAuthPlugin, { token: 'abc' }, 'p')).to.throw(ConfigError, /token: is not a known option/);
    });

    it('fails at apply when the role lacks its key: a load balancer needs a signing key', async () => {
      const k = keyFiles('ed25519', 'role');
      const lb = fakeCore('loadbalancer');
      const err = await applyPlugins([make({ alg: 'EdDSA', publicKeyFile: k.publicKeyFile })], lb, 2000).catch((e: unknown) => e);
      expect(err).to.be.instanceOf(ConfigError);
      expect((err as ConfigError).problems[0]).to.match(/load balancer signs EdDSA tokens and needs privateKeyFile/);
      const jwksOnly = await applyPlugins([make({ jwksFile: join(dir, 'nope.json') })], fakeCore('loadbalancer'), 2000).catch((e: unknown) => e);
      expect((jwksOnly as ConfigError).problems[0]).to.match(/needs the shared secret/);
    });

    it('reports unreadable, short, missing or mismatched key material clearly', async () => {
      const fail = async (opts: JwtOptions, role: 'server' | 'loadbalancer' = 'server') => {
        const e = await applyPlugins([make(opts)], fakeCore(role), 2000).catch((x: unknown) => x);
        expect(e, JSON.stringify(opts)).to.be.instanceOf(ConfigError);
        return (e as ConfigError).problems.join('\n');
      };
      expect(await fail({ secretFile: join(dir, 'missing') })).to.match(/secretFile .*missing: cannot read \(ENOENT\)/);
      const short = join(dir, 'short');
      writeFileSync(short, 'hunter2\n', { mode: 0o600 });
      expect(await fail({ secretFile: short })).to.match(/is 7 bytes; HS256 needs at least 32/);
      expect(await fail({ secretEnv: 'QHCP_TEST_UNSET_VARIABLE' })).to.match(/QHCP_TEST_UNSET_VARIABLE is not set/);
      const ed = keyFiles('ed25519', 'mismatch');
      expect(await fail({ alg: 'ES256', publicKeyFile: ed.publicKeyFile })).to.match(/ES256 needs an EC P-256 \(prime256v1\) key, this is a ed25519 key/);
      const notPem = join(dir, 'not.pem');
      writeFileSync(notPem, 'hello');
      expect(await fail({ alg: 'EdDSA', privateKeyFile: notPem }, 'loadbalancer')).to.match(/not a PEM private key/);
      const badJwks = join(dir, 'bad-jwks.json');
      writeFileSync(badJwks, '{"keys": 3}');
      expect(await fail({ alg: 'EdDSA', jwksFile: badJwks })).to.match(/not a JSON Web Key Set/);
    });

    it('warns about a secret file others can read, and resolves relative paths from the config file', async () => {
      const sub = mkdtempSync(join(dir, 'cfg-'));
      writeFileSync(join(sub, 'shared-secret'), randomBytes(32).toString('hex'));
      chmodSync(join(sub, 'shared-secret'), 0o644);
      const server = fakeCore('server', { configFile: join(sub, 'qhcp.config.json') });
      await applyPlugins([make({ secretFile: 'shared-secret' })], server, 2000);
      expect(server.logged(/readable by other users/)[0]).to.include({ file: join(sub, 'shared-secret') });
    });

    it('an EdDSA public key cannot be turned into an HS256 secret (algorithm confusion)', async () => {
      const k = keyFiles('ed25519', 'confuse');
      const { check } = await pair({ alg: 'EdDSA', privateKeyFile: k.privateKeyFile }, { alg: 'EdDSA', publicKeyFile: k.publicKeyFile });
      const pubPem = new Uint8Array(Buffer.from(k.publicKey.export({ type: 'spki', format: 'pem' }) as string));
      const forged = await new SignJWT({ iss: 'qhcp-loadbalancer', aud: 'qhcp-server', iat: nowS(), exp: nowS() + 60 }).setProtectedHeader({ alg: 'HS256' }).sign(pubPem);
      expect(await check(forged)).to.include({ ok: false, kind: 'AUTH_ALG_REJECTED' });
    });
  });
});
