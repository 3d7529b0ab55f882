/**
 * The jwt plugin between real processes: a `qhcp server` and a `qhcp loadbalancer` started with
 * config files (in a temp dir, passed with --config) enabling jwt with the secret in a file. The
 * load balancer with the right secret sees the server UP; one with a wrong secret sees it fail
 * with `AUTH_BAD_SIGNATURE: ...` in its status, and one without the plugin `AUTH_REQUIRED: ...`.
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { statusOf, startServer, startLoadBalancer, queryStatus, waitForState, waitUntil, stopAll } from '../helpers/procs.ts';

describe('jwt between real processes', function () {
  this.timeout(90_000);
  let dir: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-jwt-int-'));
  });
  afterEach(() => stopAll());
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** A config file enabling jwt with a fresh or given secret file; returns its path. */
  function config(name: string, secretFile: string): string {
    const file = join(dir, `${name}.json`);
    writeFileSync(file, JSON.stringify({ plugins: [['jwt', { secretFile, audience: 'qhcp-it' }]] }));
    return file;
  }
  function secret(name: string): string {
    const file = join(dir, name);
    writeFileSync(file, randomBytes(32).toString('base64') + '\n', { mode: 0o600 });
    return file;
  }

  it('UP with the shared secret; AUTH_BAD_SIGNATURE with a wrong one; AUTH_REQUIRED without a token', async () => {
    const shared = secret('shared');
    const server = await startServer({ args: ['--config', config('server', shared)] });
    expect(server.proc.output).to.match(/load balancers must present a valid token/);
    expect(server.proc.output).to.not.match(/AUTH IS OPEN/);

    // Generous timeouts: on a busy machine a slow check must not pass for an auth failure.
    const lbOpts = { interval: 1, args: ['--check-timeout', '0.9'] };
    const good = await startLoadBalancer([server.address], { ...lbOpts, args: [...lbOpts.args, '--config', config('lb-good', shared)] });
    const up = await waitForState(good.port, server.address, 'UP', 30_000);
    expect(up.lastError).to.equal(null);

    const bad = await startLoadBalancer([server.address], { ...lbOpts, args: [...lbOpts.args, '--config', config('lb-bad', secret('wrong'))] });
    const authError = async (port: number) => (await queryStatus(port)).find((s) => s.address === server.address && /^AUTH_/.test(s.lastError ?? ''));
    const rejected = await waitUntil(() => authError(bad.port), 30_000, 'an auth failure in the status', 150);
    expect(rejected.lastError).to.match(/^AUTH_BAD_SIGNATURE: token signature does not verify$/);
    expect(rejected.state).to.not.equal('UP');

    const none = await startLoadBalancer([server.address], lbOpts);
    const required = await waitUntil(() => authError(none.port), 30_000, 'AUTH_REQUIRED in the status', 150);
    expect(required.lastError).to.match(/^AUTH_REQUIRED: /);

    // The good load balancer was not disturbed, and the server logged the failures without tokens.
    expect((await statusOf(good.port, server.address)).state).to.equal('UP');
    await waitUntil(() => /authentication failed.*AUTH_BAD_SIGNATURE/.test(server.proc.output), 10_000, 'the server to log the rejection');
    expect(server.proc.output).to.not.match(/eyJ[A-Za-z0-9_-]{10,}\./, 'no token in the server log');
  });

  it('a load balancer whose config gives it no signing key refuses to start with a config error', async () => {
    const pub = join(dir, 'only-public.json');
    writeFileSync(pub, JSON.stringify({ plugins: [['jwt', { alg: 'EdDSA', publicKeyFile: join(dir, 'whatever.pem') }]] }));
    const { runQhcp } = await import('../helpers/procs.ts');
    const r = await runQhcp(['loadbalancer', '--servers', '127.0.0.1:1', '--loadbalancer-host', '127.0.0.1', '--loadbalancer-port', '0', '--config', pub], { timeoutMs: 30_000 });
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/needs privateKeyFile/);
  });
});
