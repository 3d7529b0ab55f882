/**
 * Credentials that cannot be replayed (issue 13, item 9) and the query port's authentication
 * (item 1), with real processes: two agents and a load balancer using the jwt plugin with
 * per-agent audiences. A token for one agent is refused by the other; the same token twice is
 * refused (jti); a session ends with AUTH_EXPIRED when its token expires, while the load
 * balancer renews its own sessions in time and keeps both agents UP. The query port is on
 * loopback by default, warns when opened wider without auth, and with `verifyQueries` requires a
 * token from `qhcp status`/`qhcp pick` (--token-file).
 */
import { expect } from 'chai';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { encodeFrame } from '../../core/protocol/codec.ts';
import { codeName } from '../../core/protocol/session.ts';
import { startServer, startLoadBalancer, waitForState, stopAll, runQhcp, freePort, QhcpProcess, waitUntil, sleep } from '../helpers/procs.ts';
import { RawPeer } from '../helpers/rawpeer.ts';
import { transitionsIn } from './honest.ts';

describe('Robustness: per-agent audiences, replay, expiry; query port auth', function () {
  this.timeout(120_000);
  let dir: string;
  let secret: Uint8Array;
  let cfg: string;

  const nowS = () => Math.floor(Date.now() / 1000);
  function token(aud: string, o: { exp?: number; jti?: string } = {}): Promise<string> {
    return new SignJWT({ sub: 'test' })
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer('qhcp-loadbalancer')
      .setAudience(aud)
      .setIssuedAt(nowS())
      .setExpirationTime(o.exp ?? nowS() + 60)
      .setJti(o.jti ?? randomUUID())
      .sign(secret);
  }
  async function hello(port: number, tok: string): Promise<RawPeer> {
    const p = await RawPeer.open({ port, keepAliveMs: 500 });
    await p.send(encodeFrame({ type: 'HELLO', body: { versions: [1], role: 'checker', node: 'tester', token: tok } }));
    await waitUntil(() => p.isClosed || p.received.some((m) => m.type === 'ACK'), 10_000, 'ACK or close');
    return p;
  }

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-aud-'));
    const text = randomBytes(32).toString('base64');
    secret = new Uint8Array(Buffer.from(text, 'utf8'));
    const secretFile = join(dir, 'secret');
    writeFileSync(secretFile, text + '\n', { mode: 0o600 });
    cfg = join(dir, 'qhcp.config.json');
    // No `audience`: per-agent audiences. Short-lived tokens and a small clock tolerance.
    writeFileSync(cfg, JSON.stringify({ plugins: [['jwt', { secretFile, ttlSeconds: 4, clockToleranceSeconds: 1, verifyQueries: true }]] }));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));
  afterEach(() => stopAll());

  it('a token for one agent is refused by another; a replayed token is refused; a session ends when its token expires; the load balancer renews and keeps both UP', async () => {
    const a = await startServer({ args: ['--config', cfg, '--log-level', 'debug'] });
    const b = await startServer({ args: ['--config', cfg] });
    const lb = await startLoadBalancer([a.address, b.address], { interval: 1, args: ['--config', cfg, '--check-timeout', '0.9'] });
    const tokFile = join(dir, 'query-token');
    writeFileSync(tokFile, (await token('qhcp-query', { exp: nowS() + 600 })) + '\n');
    // The helpers' STATUS client has no token: ask with qhcp status --token-file instead.
    const stateOf = async (addr: string) => {
      const r = await runQhcp(['status', '--address', `127.0.0.1:${lb.port}`, '--json', '--token-file', tokFile]);
      expect(r.code, r.stderr).to.equal(0);
      return (JSON.parse(r.stdout) as { servers: Array<{ address: string; state: string }> }).servers.find((s) => s.address === addr)?.state;
    };
    await waitUntil(async () => (await stateOf(a.address)) === 'UP' && (await stateOf(b.address)) === 'UP', 30_000, 'both agents UP');
    const upAt = lb.proc.output.length;

    const forA = await token(a.address);
    const good = await hello(a.port, forA);
    expect(good.received.map((m) => m.type)).to.include('ACK');
    const other = await hello(b.port, await token(a.address));
    const r1 = await other.closedWith();
    expect(codeName(r1.code)).to.equal('AUTH_BAD_CLAIM');
    expect(r1.reason).to.match(/audience/);
    const replay = await hello(a.port, forA);
    const r2 = await replay.closedWith();
    expect(codeName(r2.code)).to.equal('AUTH_BAD_CLAIM');
    expect(r2.reason).to.match(/already used/);

    // A session ends with its token: one that expires in 2 s (plus the 1 s clock tolerance).
    const short = await hello(a.port, await token(a.address, { exp: nowS() + 2 }));
    expect(short.received.map((m) => m.type)).to.include('ACK');
    const r3 = await short.closedWith(15_000);
    expect(codeName(r3.code)).to.equal('AUTH_EXPIRED');
    await good.close();

    // Meanwhile (and for a few more token lifetimes) the load balancer renewed its sessions.
    await sleep(6000);
    expect(transitionsIn(lb.proc.output.slice(upAt)).filter((t) => t.to !== 'UP')).to.deep.equal([]);
    expect(await stateOf(a.address)).to.equal('UP');
    expect(await stateOf(b.address)).to.equal('UP');
    const connects = (a.proc.output.match(/load balancer connected .*node=(?!tester)/g) ?? []).length;
    expect(connects, 'connections the load balancer made to agent a (renewals)').to.be.at.least(3);
  });

  it('query port: verifyQueries requires a token from qhcp status and pick; a token for an agent is refused', async () => {
    const lb = await startLoadBalancer(['127.0.0.1:9'], { interval: 1, args: ['--config', cfg] });
    const addr = `127.0.0.1:${lb.port}`;
    const none = await runQhcp(['status', '--address', addr]);
    expect(none.code).to.equal(1);
    expect(none.stderr).to.match(/AUTH_REQUIRED/);
    const wrong = join(dir, 'wrong-token');
    writeFileSync(wrong, await token('127.0.0.1:4243'));
    const w = await runQhcp(['pick', '--address', addr, '--token-file', wrong]);
    expect(w.code).to.equal(1);
    expect(w.stderr).to.match(/AUTH_BAD_CLAIM/);
    const ok = join(dir, 'ok-token');
    writeFileSync(ok, await token('qhcp-query'));
    const st = await runQhcp(['status', '--address', addr, '--json', '--token-file', ok]);
    expect(st.code, st.stderr).to.equal(0);
    expect(JSON.parse(st.stdout).servers[0].address).to.equal('127.0.0.1:9');
  });

  it('query port: loopback by default (the seed flags still set the port); a warning when bound wider without auth', async () => {
    const port = await freePort();
    const lb = new QhcpProcess(['-loadbalancer', '-servers', '127.0.0.1:9', '-loadbalancer-port', String(port), '-status', 'none']);
    await lb.waitFor(/load balancer started/, 60_000);
    expect(lb.output).to.match(new RegExp(`query=127\\.0\\.0\\.1:${port}`));
    expect(lb.output).to.not.match(/QUERY PORT IS OPEN/);
    const wide = new QhcpProcess(['-loadbalancer', '-servers', '127.0.0.1:9', '-loadbalancer-host', '0.0.0.0', '-loadbalancer-port', String(await freePort()), '-status', 'none']);
    await wide.waitFor(/load balancer started/, 60_000);
    expect(wide.output).to.match(/WARN .*QUERY PORT IS OPEN/);
    // With jwt verifyQueries, no warning.
    const authed = new QhcpProcess(['-loadbalancer', '-servers', '127.0.0.1:9', '-loadbalancer-host', '0.0.0.0', '-loadbalancer-port', String(await freePort()), '-status', 'none', '--config', cfg]);
    await authed.waitFor(/load balancer started/, 60_000);
    expect(authed.output).to.not.match(/QUERY PORT IS OPEN/);
  });
});
