import { expect } from 'chai';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import http from '../../../plugins/check/http.ts';
import { ConfigError } from '../../../core/errors.ts';
import { isClean } from '../../../core/util/sanitize.ts';
import { makeCerts, type TestCerts } from '../../helpers/certs.ts';
import { make, runFor, testContext, validated } from './helpers.ts';

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
}

/** A real HTTP server on 127.0.0.1 with one route per behaviour the tests need. */
function routes(seen: Seen[]) {
  return (req: IncomingMessage, res: ServerResponse) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers });
    const path = req.url!.split('?')[0];
    switch (path) {
      case '/ok':
        res.end('status: all ok\n');
        return;
      case '/fail':
        res.statusCode = 503;
        res.end('down for now');
        return;
      case '/busy':
        res.statusCode = 429;
        res.end('slow down');
        return;
      case '/slow': {
        const t = setTimeout(() => res.end('late'), 60_000);
        res.on('close', () => clearTimeout(t));
        return;
      }
      case '/moved':
        res.statusCode = 302;
        res.setHeader('location', '/ok');
        res.end();
        return;
      case '/big': {
        // 1 MiB of filler, then the marker: beyond a 64 KiB read.
        res.write(Buffer.alloc(1024 * 1024, 'a'));
        res.end('MARKER');
        return;
      }
      default:
        res.statusCode = 404;
        res.end();
    }
  };
}

async function listen(server: Server, port = 0): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return (server.address() as AddressInfo).port;
}

const close = (server: Server) =>
  new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });

describe('check kind: http', () => {
  const dir = mkdtempSync(join(tmpdir(), 'qhcp-http-check-'));
  const seen: Seen[] = [];
  let server: Server;
  let base: string;
  const checks: Array<{ close?(): void | Promise<void> }> = [];
  const ctx = testContext(dir);
  const check = (options: Record<string, unknown>) => {
    const c = make(http, options, ctx);
    checks.push(c);
    return c;
  };

  before(async () => {
    server = createServer(routes(seen));
    base = `http://127.0.0.1:${await listen(server)}`;
  });
  after(async () => {
    for (const c of checks) await c.close?.();
    await close(server);
    rmSync(dir, { recursive: true, force: true });
  });

  it('fills its defaults from the schema: GET, 200-399, no redirects, 64 KiB', () => {
    const o = validated(http, { url: 'http://127.0.0.1:1/' });
    expect(o).to.include({ method: 'GET', followRedirects: false, maxBodyBytes: 65536 });
    expect(o.expectStatus).to.deep.equal(['200-399']);
  });

  it('passes on 200, with a GET and its headers', async () => {
    const out = await runFor(check({ url: `${base}/ok?x=1`, headers: { 'x-probe': 'yes' } }), 2000);
    expect(out).to.deep.equal({ status: 'passing', output: 'HTTP 200' });
    const last = seen.at(-1)!;
    expect(last).to.include({ method: 'GET', url: '/ok?x=1' });
    expect(last.headers['x-probe']).to.equal('yes');
    expect(last.headers['user-agent']).to.equal('qhcp-check');
  });

  it('sends HEAD when asked', async () => {
    const out = await runFor(check({ url: `${base}/ok`, method: 'HEAD' }), 2000);
    expect(out.status).to.equal('passing');
    expect(seen.at(-1)!.method).to.equal('HEAD');
  });

  it('is critical on 503 with the status as the reason', async () => {
    expect(await runFor(check({ url: `${base}/fail` }), 2000)).to.deep.equal({ status: 'critical', output: 'HTTP 503' });
  });

  it('gives a warning for a warningStatus (429 as Consul does)', async () => {
    expect(await runFor(check({ url: `${base}/busy`, warningStatus: ['429'] }), 2000)).to.deep.equal({ status: 'warning', output: 'HTTP 429' });
    expect((await runFor(check({ url: `${base}/busy` }), 2000)).status).to.equal('critical');
  });

  it('is critical "timed out" when the server is slower than the timeout, and returns at the abort', async () => {
    const c = check({ url: `${base}/slow` });
    const t0 = Date.now();
    const out = await runFor(c, 300);
    expect(out.status).to.equal('critical');
    expect(out.output).to.match(/^timed out after \d+ ms$/);
    expect(Date.now() - t0).to.be.below(20_000); // returned at the abort, not at the server's answer (60 s)
    // A runner that aborts with its own "timed out ..." reason gets that text back.
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('timed out after 300 ms')), 300);
    expect(await c.run(ac.signal)).to.deep.equal({ status: 'critical', output: 'timed out after 300 ms' });
  });

  it('does not follow redirects by default; a 302 is checked as a status', async () => {
    expect(await runFor(check({ url: `${base}/moved` }), 2000)).to.deep.equal({ status: 'passing', output: 'HTTP 302' });
    expect(await runFor(check({ url: `${base}/moved`, expectStatus: ['200'] }), 2000)).to.deep.equal({ status: 'critical', output: 'HTTP 302' });
    const before = seen.length;
    expect(await runFor(check({ url: `${base}/moved`, expectStatus: ['200'], followRedirects: true }), 2000)).to.deep.equal({ status: 'passing', output: 'HTTP 200' });
    expect(seen.slice(before).map((s) => s.url)).to.deep.equal(['/moved', '/ok']);
  });

  it('matches the body by substring and by regular expression', async () => {
    expect((await runFor(check({ url: `${base}/ok`, bodyContains: 'all ok' }), 2000)).status).to.equal('passing');
    expect(await runFor(check({ url: `${base}/ok`, bodyContains: 'ready' }), 2000)).to.deep.equal({ status: 'critical', output: 'body did not contain "ready"' });
    expect((await runFor(check({ url: `${base}/ok`, bodyMatches: '^status: (all )?ok$' }), 2000)).status).to.equal('critical'); // no m flag: $ is the end
    expect((await runFor(check({ url: `${base}/ok`, bodyMatches: 'status: (all )?ok' }), 2000)).status).to.equal('passing');
    expect(await runFor(check({ url: `${base}/ok`, bodyMatches: 'ok$' }), 2000)).to.deep.equal({ status: 'critical', output: 'body did not match /ok$/' });
    // The status is judged before the body.
    expect(await runFor(check({ url: `${base}/fail`, bodyContains: 'down' }), 2000)).to.deep.equal({ status: 'critical', output: 'HTTP 503' });
  });

  it('reads the body bounded: a marker past maxBodyBytes is not seen', async () => {
    expect(await runFor(check({ url: `${base}/big`, bodyContains: 'MARKER' }), 5000)).to.deep.equal({ status: 'critical', output: 'body did not contain "MARKER"' });
    expect((await runFor(check({ url: `${base}/big`, bodyContains: 'MARKER', maxBodyBytes: 1_048_576 }), 5000)).status).to.equal('critical'); // 1 MiB of filler, marker after it
    expect((await runFor(check({ url: `${base}/big`, bodyContains: 'aaaa', maxBodyBytes: 64 }), 5000)).status).to.equal('passing');
  });

  it('is critical with the connect error when the server is stopped, and passes again when it is back', async () => {
    const s = createServer(routes([]));
    const port = await listen(s);
    const c = check({ url: `http://127.0.0.1:${port}/ok` });
    expect((await runFor(c, 2000)).status).to.equal('passing');
    await close(s);
    expect(await runFor(c, 2000)).to.deep.equal({ status: 'critical', output: `connect ECONNREFUSED 127.0.0.1:${port}` });
    const again = createServer(routes([]));
    await listen(again, port);
    try {
      expect(await runFor(c, 2000)).to.deep.equal({ status: 'passing', output: 'HTTP 200' });
    } finally {
      await close(again);
    }
  });

  it('opens a fresh connection per run and closes it (no pooled socket left behind)', async () => {
    const s = createServer(routes([]));
    let open = 0;
    let total = 0;
    s.on('connection', (sock) => {
      open++;
      total++;
      sock.on('close', () => open--);
    });
    const port = await listen(s);
    try {
      const c = check({ url: `http://127.0.0.1:${port}/ok` });
      for (let i = 0; i < 3; i++) expect((await runFor(c, 2000)).status).to.equal('passing');
      expect(total).to.equal(3);
      for (let i = 0; i < 50 && open > 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(open).to.equal(0);
    } finally {
      await close(s);
    }
  });

  describe('TLS', () => {
    let certs: TestCerts;
    let tlsServer: Server;
    let tlsBase: string;
    before(async function () {
      this.timeout(30_000);
      certs = makeCerts('qhcp-http-check-tls-');
      tlsServer = createHttpsServer({ cert: readFileSync(certs.cert), key: readFileSync(certs.key) }, routes([])) as unknown as Server;
      tlsBase = `https://127.0.0.1:${await listen(tlsServer)}`;
    });
    after(async () => {
      await close(tlsServer);
      certs.remove();
    });

    it('refuses an unknown CA, with the TLS error as the reason', async () => {
      const out = await runFor(check({ url: `${tlsBase}/ok` }), 3000);
      expect(out.status).to.equal('critical');
      expect(out.output).to.match(/^TLS: .*certificate/i);
    });

    it('trusts the CA file given (resolved against the config directory)', async () => {
      const local = testContext(certs.dir);
      const c = make(http, { url: `${tlsBase}/ok`, tls: { ca: 'ca.pem' } }, local);
      checks.push(c);
      expect(await runFor(c, 3000)).to.deep.equal({ status: 'passing', output: 'HTTP 200' });
    });

    it('skips verification with insecure: true, warning once at creation', async () => {
      const local = testContext(dir);
      const c = make(http, { url: `${tlsBase}/ok`, tls: { insecure: true } }, local);
      checks.push(c);
      expect((await runFor(c, 3000)).status).to.equal('passing');
      expect((await runFor(c, 3000)).status).to.equal('passing');
      const warnings = local.lines.filter((l) => /verification is OFF/.test(l));
      expect(warnings).to.have.length(1);
      expect(warnings[0]).to.include(tlsBase);
    });
  });

  describe('options that cannot work are config errors at creation', () => {
    const bad: Array<[string, Record<string, unknown>, RegExp]> = [
      ['an unparseable URL', { url: 'not a url' }, /is not a valid URL/],
      ['a non-http scheme', { url: 'ftp://127.0.0.1/x' }, /is not http:\/\/ or https:\/\//],
      ['an invalid regular expression', { url: 'http://127.0.0.1/', bodyMatches: '(' }, /bodyMatches is not a valid regular expression/],
      ['a missing CA file', { url: 'https://127.0.0.1/', tls: { ca: 'nope.pem' } }, /tls\.ca .*nope\.pem.* cannot be read/],
      ['a body match with HEAD', { url: 'http://127.0.0.1/', method: 'HEAD', bodyContains: 'x' }, /needs method GET/],
      ['an empty status range', { url: 'http://127.0.0.1/', expectStatus: ['399-200'] }, /empty range/],
    ];
    for (const [what, options, message] of bad) {
      it(what, () => {
        expect(() => http.create(validated(http, options), ctx)).to.throw(ConfigError, message);
      });
    }
    it('a reason never carries raw control characters from the config', async () => {
      const c = check({ url: `${base}/ok`, bodyContains: 'x\u001b[31m' });
      const out = await runFor(c, 2000);
      expect(out.status).to.equal('critical');
      expect(isClean(out.output)).to.equal(true);
      expect(out.output).to.include('\\u001b'); // JSON.stringify escapes it first
    });
  });
});
