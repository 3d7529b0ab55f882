/**
 * Bad credentials in HELLO against a real agent that requires JWTs (the built-in jwt plugin,
 * HS256, secret in a file): missing, expired, not yet valid, bad signature, alg none, wrong
 * issuer or audience, malformed, far too large. Each gets its AUTH_* code and a close, the
 * agent stays up, and a real load balancer holding the right secret keeps seeing it UP while
 * an honest checker session (with a good token) keeps getting answers.
 */
import { expect } from 'chai';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { encodeFrame } from '../../core/protocol/codec.ts';
import { codeName, Session } from '../../core/protocol/session.ts';
import { connect } from '../../core/transport/quic.ts';
import { startServer, startLoadBalancer, waitForState, stopAll, type QhcpProcess } from '../helpers/procs.ts';
import { RawPeer } from '../helpers/rawpeer.ts';
import { HonestQuery, transitionsIn } from './honest.ts';

const ISS = 'qhcp-loadbalancer';
const AUD = 'qhcp-robustness';

describe('Robustness: bad credentials', function () {
  this.timeout(60_000);
  let dir: string;
  let secret: Uint8Array;
  let server: QhcpProcess;
  let serverPort: number;
  let serverAddr: string;
  let lb: QhcpProcess;
  let query: HonestQuery;
  let honest: Session;
  let honestOk = 0;

  const now = () => Math.floor(Date.now() / 1000);
  /** A token as the load balancer would sign it, with `claims` / `key` changed. */
  async function token(claims: Record<string, unknown> = {}, key: Uint8Array = secret): Promise<string> {
    return new SignJWT({ sub: 'robustness', ...claims })
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer((claims.iss as string) ?? ISS)
      .setAudience((claims.aud as string) ?? AUD)
      .setIssuedAt((claims.iat as number) ?? now())
      .setExpirationTime((claims.exp as number) ?? now() + 60)
      .setJti(randomUUID())
      .sign(key);
  }
  const b64url = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');

  async function helloWith(tok: string | undefined): Promise<{ code: string; reason: string }> {
    const peer = await RawPeer.open({ port: serverPort });
    await peer.send(encodeFrame({ type: 'HELLO', body: { versions: [1], role: 'checker', node: 'attacker', ...(tok !== undefined ? { token: tok } : {}) } }));
    const r = await peer.closedWith();
    return { code: codeName(r.code), reason: r.reason };
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-cred-'));
    const text = randomBytes(32).toString('base64');
    secret = new Uint8Array(Buffer.from(text, 'utf8'));
    const secretFile = join(dir, 'secret');
    writeFileSync(secretFile, text + '\n', { mode: 0o600 });
    const cfg = join(dir, 'qhcp.config.json');
    writeFileSync(cfg, JSON.stringify({ plugins: [['jwt', { secretFile, audience: AUD }]] }));
    const s = await startServer({ args: ['--config', cfg] });
    server = s.proc;
    serverPort = s.port;
    serverAddr = s.address;
    const l = await startLoadBalancer([s.address], { interval: 0.5, args: ['--config', cfg, '--check-timeout', '0.45'] });
    lb = l.proc;
    await waitForState(l.port, s.address, 'UP');
    query = await HonestQuery.start(l.port, [s.address]);
    honest = new Session(await connect({ host: '127.0.0.1', port: serverPort, timeoutMs: 5000 }), { role: 'client', onMessage: () => {} });
    const ack = await honest.request('HELLO', { versions: [1], role: 'checker', node: 'honest', token: await token() }, 5000);
    expect(ack.type).to.equal('ACK');
  });

  afterEach(async () => {
    expect(server.running, 'agent is up').to.equal(true);
    const r = await honest.request('HEALTH_REQUEST', { seq: ++honestOk }, 8000);
    expect(r.type).to.equal('HEALTH_RESPONSE');
    await query.expectServing();
  });

  after(async () => {
    honest?.close();
    await query?.stop();
    const bad = lb ? transitionsIn(lb.output).filter((t) => t.server === serverAddr && t.to !== 'UP') : [];
    await stopAll();
    if (dir) rmSync(dir, { recursive: true, force: true });
    expect(bad).to.deep.equal([]);
    // Every refused HELLO was counted, logged or not (the stop line carries the counters).
    const counted = server?.output.match(/server stopped .*authFailures=(\d+)/);
    expect(counted, 'server stop line with counters').to.not.equal(null);
    expect(Number(counted![1])).to.be.at.least(40);
  });

  it('a good token is accepted (the control case)', async () => {
    const peer = await RawPeer.open({ port: serverPort });
    await peer.send(encodeFrame({ type: 'HELLO', body: { versions: [1], role: 'checker', node: 'good', token: await token() } }));
    await peer.waitFor('ACK');
    await peer.close();
  });

  it('missing: AUTH_REQUIRED', async () => {
    expect((await helloWith(undefined)).code).to.equal('AUTH_REQUIRED');
  });

  it('expired: AUTH_EXPIRED', async () => {
    expect((await helloWith(await token({ iat: now() - 600, exp: now() - 300 }))).code).to.equal('AUTH_EXPIRED');
  });

  it('not yet valid: AUTH_NOT_YET_VALID', async () => {
    expect((await helloWith(await token({ nbf: now() + 600 }))).code).to.equal('AUTH_NOT_YET_VALID');
  });

  it('bad signature: AUTH_BAD_SIGNATURE', async () => {
    expect((await helloWith(await token({}, new Uint8Array(randomBytes(32))))).code).to.equal('AUTH_BAD_SIGNATURE');
    // A good token with its signature bytes altered.
    const t = await token();
    const tampered = t.slice(0, -4) + (t.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    expect((await helloWith(tampered)).code).to.equal('AUTH_BAD_SIGNATURE');
  });

  it('alg none: AUTH_ALG_REJECTED', async () => {
    const none = `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url({ iss: ISS, aud: AUD, sub: 'x', iat: now(), exp: now() + 60 })}.`;
    expect((await helloWith(none)).code).to.equal('AUTH_ALG_REJECTED');
  });

  it('wrong issuer or audience: AUTH_BAD_CLAIM', async () => {
    expect((await helloWith(await token({ iss: 'someone-else' }))).code).to.equal('AUTH_BAD_CLAIM');
    expect((await helloWith(await token({ aud: 'another-service' }))).code).to.equal('AUTH_BAD_CLAIM');
  });

  it('malformed: AUTH_INVALID', async () => {
    expect((await helloWith('not.a.jwt')).code).to.equal('AUTH_INVALID');
    expect((await helloWith('x')).code).to.equal('AUTH_INVALID');
  });

  it('a token far larger than any real one: refused unparsed (AUTH_INVALID), or by the schema beyond its limit', async () => {
    const big = await token({ pad: 'p'.repeat(12_000) });
    expect(big.length).to.be.within(12_000, 16_384);
    const r = await helloWith(big);
    expect(r.code).to.equal('AUTH_INVALID');
    expect(r.reason).to.match(/large|long|bytes/i);
    const huge = await token({ pad: 'p'.repeat(40_000) });
    expect((await helloWith(huge)).code).to.equal('INVALID_MESSAGE');
  });

  it('auth failures are counted and their log lines rate-limited', async () => {
    const before = (server.output.match(/authentication failed/g) ?? []).length;
    await Promise.all(Array.from({ length: 30 }, async () => expect((await helloWith('x')).code).to.equal('AUTH_INVALID')));
    const lines = (server.output.match(/authentication failed/g) ?? []).length;
    expect(lines - before).to.be.at.most(20);
    // No token ever reaches the log.
    expect(server.output).to.not.match(/eyJ[A-Za-z0-9_-]{10,}/);
  });
});
