/**
 * The load balancer's HTTP listener, in process: /metrics (fed by the hooks, checked by
 * promtool), the JSON views, the live event stream, the admin API's auth and errors, the state
 * file, and the listener's address rules.
 */
import { expect } from 'chai';
import { mkdtempSync, writeFileSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LbHttp } from '../../core/http/loadbalancer.ts';
import { Admin } from '../../core/http/admin.ts';
import { parseHttp, httpAddressOf, isLoopback, EarlyEvents } from '../../core/http/common.ts';
import { createApp, listen, readToken } from '../../core/http/server.ts';
import { failureReason, metricLabel } from '../../core/http/metrics.ts';
import { createLogger } from '../../core/util/log.ts';
import { fakeLb, promtool } from './fake-lb.ts';
import { waitUntil } from '../helpers/procs.ts';

const A = '127.0.0.1:4301';
const B = '127.0.0.1:4302';
const TOKEN = 'test-token-0123456789abcdef';

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'qhcp-http-'));
}

/** The value of one sample line `name{labels} value` (labels in any order), or undefined. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && line.split(' ')[0] !== name) continue;
    const m = /^([^{ ]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return undefined;
}

describe('LbHttp (HTTP listener of the load balancer)', () => {
  describe('GET /metrics', () => {
    it('exposes state, checks, failures by reason, transitions, durations, weight and the agent metrics, valid for promtool', async () => {
      const lb = fakeLb([A, B]);
      const web = new LbHttp(lb, { at: undefined, explicit: false });
      lb.backends[0]!.name = 'agent-a';
      lb.check(A, true, { latencyMs: 3, metrics: { cpu: 12.5, 'cpu.core0': 20, 'disk.root:usedPct': 40 } });
      lb.move(A, 'UP', 'first good check');
      lb.check(B, false, { error: 'RESPONSE_TIMEOUT: no HEALTH_RESPONSE within 500 ms' });
      lb.check(B, false, { error: 'cannot connect to 127.0.0.1:4302: timed out' });
      lb.check(B, false, { error: 'RESPONSE_TIMEOUT: no HEALTH_RESPONSE within 500 ms' });
      lb.move(B, 'DOWN', '3 consecutive failed checks');
      lb.pluginFailures.set('least-loaded', 2);
      const res = await web.app.inject({ method: 'GET', url: '/metrics' });
      expect(res.statusCode).to.equal(200);
      expect(res.headers['content-type']).to.match(/^text\/plain; version=0\.0\.4/);
      const t = res.body;
      const a = { backend: A, service: '', name: 'agent-a' };
      const b = { backend: B, service: '', name: '' };
      expect(sample(t, 'qhcp_backend_status', { ...a, state: 'UP' })).to.equal(1);
      expect(sample(t, 'qhcp_backend_status', { ...a, state: 'DOWN' })).to.equal(0);
      expect(sample(t, 'qhcp_backend_status', { ...b, state: 'DOWN' })).to.equal(1);
      expect(sample(t, 'qhcp_backends', { state: 'UP' })).to.equal(1);
      expect(sample(t, 'qhcp_backends', { state: 'DOWN' })).to.equal(1);
      expect(sample(t, 'qhcp_backend_checks_total', { ...a, result: 'ok' })).to.equal(1);
      expect(sample(t, 'qhcp_backend_checks_total', { ...b, result: 'failed' })).to.equal(3);
      expect(sample(t, 'qhcp_backend_check_failures_total', { ...b, reason: 'RESPONSE_TIMEOUT' })).to.equal(2);
      expect(sample(t, 'qhcp_backend_check_failures_total', { ...b, reason: 'CONNECT' })).to.equal(1);
      expect(sample(t, 'qhcp_backend_transitions_total', { ...a, from: 'UNKNOWN', to: 'UP' })).to.equal(1);
      expect(sample(t, 'qhcp_backend_transitions_total', { ...b, from: 'UNKNOWN', to: 'DOWN' })).to.equal(1);
      expect(sample(t, 'qhcp_backend_check_duration_seconds_count', a)).to.equal(1);
      expect(sample(t, 'qhcp_backend_check_duration_seconds_bucket', { ...a, le: '0.005' })).to.equal(1);
      expect(sample(t, 'qhcp_backend_check_duration_seconds_bucket', { ...a, le: '0.0025' })).to.equal(0);
      expect(sample(t, 'qhcp_backend_metric', { ...a, metric: 'cpu' })).to.equal(12.5);
      expect(sample(t, 'qhcp_backend_metric', { ...a, metric: 'cpu_core0' })).to.equal(20);
      expect(sample(t, 'qhcp_backend_metric', { ...a, metric: 'disk_root_usedPct' })).to.equal(40);
      expect(sample(t, 'qhcp_backend_weight', a)).to.equal(1);
      expect(sample(t, 'qhcp_backend_consecutive_failures', b)).to.equal(3);
      expect(sample(t, 'qhcp_backend_report_age_seconds', a)).to.be.within(0, 5);
      expect(sample(t, 'qhcp_backend_last_change_timestamp_seconds', a)).to.be.closeTo(Date.now() / 1000, 5);
      expect(sample(t, 'qhcp_plugin_errors_total', { plugin: 'least-loaded' })).to.equal(2);
      promtool(t);
      await web.close();
    });

    it('exposes PICK decisions by the balancer that chose and by result, counting only what is new at each scrape', async () => {
      const lb = fakeLb([A, B]);
      const web = new LbHttp(lb, { at: undefined, explicit: false });
      lb.pickCounts.set('round-robin picked', 2).set('none no_answer', 1).set('none none_up', 1);
      const scrape = async () => (await web.app.inject({ method: 'GET', url: '/metrics' })).body;
      let t = await scrape();
      expect(sample(t, 'qhcp_picks_total', { strategy: 'round-robin', result: 'picked' })).to.equal(2);
      expect(sample(t, 'qhcp_picks_total', { strategy: 'none', result: 'no_answer' })).to.equal(1);
      expect(sample(t, 'qhcp_picks_total', { strategy: 'none', result: 'none_up' })).to.equal(1);
      promtool(t);
      lb.pickCounts.set('round-robin picked', 5);
      t = await scrape();
      expect(sample(t, 'qhcp_picks_total', { strategy: 'round-robin', result: 'picked' })).to.equal(5);
      expect(sample(t, 'qhcp_picks_total', { strategy: 'none', result: 'none_up' })).to.equal(1);
      await web.close();
    });

    it('drops the series of a backend that was removed', async () => {
      const lb = fakeLb([A, B]);
      const web = new LbHttp(lb, { at: undefined, explicit: false });
      lb.check(B, false);
      lb.move(B, 'DOWN', 'x');
      expect((await web.app.inject({ url: '/metrics' })).body).to.include(`backend="${B}"`);
      lb.removeBackend(B);
      const t = (await web.app.inject({ url: '/metrics' })).body;
      expect(t).to.not.include(`backend="${B}"`);
      expect(t).to.include(`backend="${A}"`);
      await web.close();
    });

    it('counts the checks made between start and the listener (kept by EarlyEvents)', async () => {
      const lb = fakeLb([A]);
      const early = new EarlyEvents(lb.hooks);
      lb.check(A, true);
      lb.move(A, 'UP', 'first good check');
      lb.check(A, false);
      const web = new LbHttp(lb, { at: undefined, explicit: false, early });
      lb.check(A, true);
      const t = (await web.app.inject({ url: '/metrics' })).body;
      expect(sample(t, 'qhcp_backend_checks_total', { backend: A, result: 'ok' })).to.equal(2);
      expect(sample(t, 'qhcp_backend_checks_total', { backend: A, result: 'failed' })).to.equal(1);
      expect(sample(t, 'qhcp_backend_transitions_total', { backend: A, from: 'UNKNOWN', to: 'UP' })).to.equal(1);
      expect(early.events).to.have.length(0);
      await web.close();
    });

    it('keeps the failure-reason label set bounded', () => {
      expect(failureReason('RESPONSE_TIMEOUT: no answer')).to.equal('RESPONSE_TIMEOUT');
      expect(failureReason('QHCP_ERR_CONNECT x')).to.equal('CONNECT');
      expect(failureReason('cannot connect to x')).to.equal('CONNECT');
      expect(failureReason('weird <stuff>')).to.equal('OTHER');
      expect(metricLabel('a.b:c-d/é')).to.equal('a_b_c_d__');
    });
  });

  describe('JSON and the live event stream', () => {
    it('GET /api/status lists backends, page settings and transitions', async () => {
      const lb = fakeLb([A]);
      const web = new LbHttp(lb, { at: undefined, explicit: false });
      lb.check(A, true, { metrics: { cpu: 5 } });
      lb.move(A, 'UP', 'first good check');
      const s = (await web.app.inject({ url: '/api/status' })).json();
      expect(s.page).to.include({ node: 'lb-test', fall: 3, rise: 1, admin: false });
      expect(s.backends[0]).to.include({ address: A, state: 'UP', failures: 0 });
      expect(s.transitions).to.deep.include({ server: A, from: 'UNKNOWN', to: 'UP', reason: 'first good check', at: s.transitions[0].at });
      expect(s.history[A]).to.have.length(1);
      await web.close();
    });

    it('GET / serves the page with a strict content security policy', async () => {
      const lb = fakeLb([A]);
      const web = new LbHttp(lb, { at: undefined, explicit: false });
      const res = await web.app.inject({ url: '/' });
      expect(res.statusCode).to.equal(200);
      expect(res.headers['content-security-policy']).to.match(/default-src 'none'; script-src 'self'/);
      expect(res.body).to.include('<script src="app.js"></script>');
      expect(res.body).to.not.match(/https?:\/\//); // no CDN: works offline
      const js = await web.app.inject({ url: '/app.js' });
      expect(js.body).to.not.include('innerHTML');
      expect((await web.app.inject({ url: '/nope' })).json()).to.deep.equal({ error: 'NOT_FOUND', message: 'no route GET /nope' });
      await web.close();
    });

    it('GET /events sends a snapshot, then coalesced updates after checks and transitions', async () => {
      const lb = fakeLb([A, B]);
      const web = new LbHttp(lb, { at: { host: '127.0.0.1', port: 0 }, explicit: true, flushMs: 50 });
      const at = (await web.listen())!;
      const events: Array<{ event: string; data: { backends: Array<{ address: string; state: string }>; transitions: unknown[] } }> = [];
      let buf = '';
      const req = request({ host: '127.0.0.1', port: at.port, path: '/events' });
      req.on('response', (res) => {
        expect(res.headers['content-type']).to.match(/^text\/event-stream/);
        res.setEncoding('utf8').on('data', (d: string) => {
          buf += d;
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const event = /^event: (.*)$/m.exec(block)?.[1];
            const data = /^data: (.*)$/m.exec(block)?.[1];
            if (event && data) events.push({ event, data: JSON.parse(data) });
          }
        });
      });
      req.end();
      try {
        await waitUntil(() => events.some((e) => e.event === 'snapshot'), 5000, 'snapshot event');
        expect(events[0]!.data.backends.map((b) => b.address)).to.deep.equal([A, B]);
        await waitUntil(() => web.observer.subscriberCount === 1, 2000, 'subscriber');
        lb.check(A, true);
        lb.check(B, true);
        lb.move(B, 'UP', 'first good check');
        const u = await waitUntil(() => events.find((e) => e.event === 'update'), 5000, 'update event');
        expect(u.data.backends.map((b) => b.address).sort()).to.deep.equal([A, B]);
        expect(u.data.backends.find((b) => b.address === B)!.state).to.equal('UP');
        expect(u.data.transitions).to.have.length(1);
        // One update for three hook calls: coalesced.
        expect(events.filter((e) => e.event === 'update')).to.have.length(1);
      } finally {
        req.destroy();
        await web.close();
      }
    });
  });

  describe('admin API', () => {
    it('refuses writes while no token file is configured (403), allows reads', async () => {
      const lb = fakeLb([A]);
      const web = new LbHttp(lb, { at: undefined, explicit: false });
      const res = await web.app.inject({ method: 'PUT', url: `/api/backends/${encodeURIComponent(A)}/admin`, payload: { state: 'DRAIN' } });
      expect(res.statusCode).to.equal(403);
      expect(res.json().error).to.equal('ADMIN_DISABLED');
      expect(lb.backends[0]!.adminState).to.equal('READY');
      expect((await web.app.inject({ url: '/api/backends' })).json().backends).to.have.length(1);
      await web.close();
    });

    it('needs the bearer token, validates bodies, and answers 404/409 with JSON errors', async () => {
      const dir = tmp();
      writeFileSync(join(dir, 'token'), `${TOKEN}\n`);
      const lb = fakeLb([A, B]);
      const web = new LbHttp(lb, { at: undefined, explicit: false, tokenFile: join(dir, 'token') });
      const auth = { authorization: `Bearer ${TOKEN}` };
      const put = (url: string, payload: unknown, headers: Record<string, string> = auth) => web.app.inject({ method: 'PUT', url, payload: payload as object, headers });
      const url = `/api/backends/${encodeURIComponent(A)}`;
      expect((await put(`${url}/admin`, { state: 'DRAIN' }, {})).statusCode).to.equal(401);
      expect((await put(`${url}/admin`, { state: 'DRAIN' }, { authorization: 'Bearer wrong-token-0123456789' })).json().error).to.equal('UNAUTHORIZED');
      expect(lb.backends[0]!.adminState).to.equal('READY');
      // Unauthenticated requests learn nothing about the body rules.
      expect((await put(`${url}/admin`, { state: 'BOGUS' }, {})).statusCode).to.equal(401);
      expect((await put(`${url}/admin`, { state: 'BOGUS' })).statusCode).to.equal(400);
      const ok = await put(`${url}/admin`, { state: 'DRAIN' });
      expect(ok.statusCode).to.equal(200);
      expect(ok.json().backend).to.include({ address: A, adminState: 'DRAIN' });
      expect(lb.backends[0]!.adminState).to.equal('DRAIN');
      expect(lb.backends[1]!.adminState).to.equal('READY');
      expect((await put(`${url}/weight`, { weight: 50 })).json().backend.weight).to.equal(50);
      expect((await put(`${url}/weight`, { weight: 900 })).json().error).to.equal('BAD_WEIGHT'); // the fake's range is 0-256
      expect((await put(`${url}/weight`, { weight: -1 })).statusCode).to.equal(400);
      expect((await put(`/api/backends/${encodeURIComponent('10.9.9.9:1')}/admin`, { state: 'MAINT' })).statusCode).to.equal(404);
      const add = await web.app.inject({ method: 'POST', url: '/api/backends', payload: { address: '127.0.0.1:4303' }, headers: auth });
      expect(add.statusCode).to.equal(201);
      expect(add.json().backend).to.include({ address: '127.0.0.1:4303', state: 'UNKNOWN' });
      expect((await web.app.inject({ method: 'POST', url: '/api/backends', payload: { address: '127.0.0.1:4303' }, headers: auth })).statusCode).to.equal(409);
      expect((await web.app.inject({ method: 'POST', url: '/api/backends', payload: { address: 'not an address!' }, headers: auth })).json().error).to.equal('BAD_ADDRESS');
      expect((await web.app.inject({ method: 'POST', url: '/api/backends', payload: 'x'.repeat(20_000), headers: { ...auth, 'content-type': 'application/json' } })).statusCode).to.equal(413);
      const del = await web.app.inject({ method: 'DELETE', url: `/api/backends/${encodeURIComponent(B)}`, headers: auth });
      expect(del.json()).to.deep.equal({ removed: B });
      expect(lb.backends.map((b) => b.address)).to.deep.equal([A, '127.0.0.1:4303']);
      expect(lb.backends[0]!.adminState).to.equal('DRAIN');
      await web.close();
      rmSync(dir, { recursive: true });
    });

    it('persists changes in the state file and applies it to a restarted load balancer', async () => {
      const dir = tmp();
      const file = join(dir, 'state.json');
      writeFileSync(join(dir, 'token'), TOKEN);
      const logger = createLogger({ level: 'silent' });
      const lb = fakeLb([A, B]);
      const admin = new Admin(lb, logger, file);
      await admin.applyStartup();
      const web = new LbHttp(lb, { at: undefined, explicit: false, tokenFile: join(dir, 'token'), admin });
      const auth = { authorization: `Bearer ${TOKEN}` };
      await web.app.inject({ method: 'POST', url: '/api/backends', payload: { address: '127.0.0.1:4303' }, headers: auth });
      await web.app.inject({ method: 'DELETE', url: `/api/backends/${encodeURIComponent(B)}`, headers: auth });
      await web.app.inject({ method: 'PUT', url: `/api/backends/${encodeURIComponent(A)}/admin`, payload: { state: 'MAINT' }, headers: auth });
      await web.app.inject({ method: 'PUT', url: `/api/backends/${encodeURIComponent('127.0.0.1:4303')}/weight`, payload: { weight: 7 }, headers: auth });
      await web.close();
      expect(existsSync(file)).to.equal(true);
      const doc = JSON.parse(readFileSync(file, 'utf8'));
      expect(doc).to.include({ version: 1 });
      expect(doc.added).to.deep.equal(['127.0.0.1:4303']);
      expect(doc.removed).to.deep.equal([B]);
      expect(doc.backends).to.deep.equal({ [A]: { admin: 'MAINT' }, '127.0.0.1:4303': { weight: 7 } });
      // A restart: the same configuration, the state file applied before the checks start.
      const again = fakeLb([A, B]);
      await new Admin(again, logger, file).applyStartup();
      expect(again.backends.map((b) => [b.address, b.adminState, b.weight])).to.deep.equal([
        [A, 'MAINT', 1],
        ['127.0.0.1:4303', 'READY', 7],
      ]);
      writeFileSync(file, '{"version": 2}');
      expect(() => new Admin(fakeLb([A]), logger, file)).to.throw(/not a qhcp state file/);
      rmSync(dir, { recursive: true });
    });

    it('reads the token file strictly', () => {
      const dir = tmp();
      writeFileSync(join(dir, 'short'), 'abc\n');
      expect(() => readToken(join(dir, 'short'))).to.throw(/at least 16 characters/);
      expect(() => readToken(join(dir, 'missing'))).to.throw(/cannot read/);
      writeFileSync(join(dir, 'ok'), `  ${TOKEN}  \nsecond line ignored\n`);
      expect(readToken(join(dir, 'ok'))).to.equal(TOKEN);
      rmSync(dir, { recursive: true });
    });
  });

  describe('listener address', () => {
    it('parses http values: host:port, [v6]:port, :port, port, off', () => {
      expect(parseHttp('127.0.0.1:4280')).to.deep.equal({ host: '127.0.0.1', port: 4280 });
      expect(parseHttp('[::1]:9')).to.deep.equal({ host: '::1', port: 9 });
      expect(parseHttp(':8080')).to.deep.equal({ host: '127.0.0.1', port: 8080 });
      expect(parseHttp('8080')).to.deep.equal({ host: '127.0.0.1', port: 8080 });
      expect(parseHttp('127.0.0.1:0')).to.deep.equal({ host: '127.0.0.1', port: 0 });
      expect(parseHttp('off')).to.equal(undefined);
      expect(() => parseHttp('nope nope')).to.throw(/bad address/);
      expect(httpAddressOf({}, 'loadbalancer')).to.deep.equal({ at: { host: '127.0.0.1', port: 4280 }, explicit: false });
      expect(httpAddressOf({}, 'server')).to.deep.equal({ at: undefined, explicit: false });
      expect(isLoopback('127.0.0.1') && isLoopback('::1') && !isLoopback('0.0.0.0') && !isLoopback('10.0.0.1')).to.equal(true);
    });

    it('warns at start-up when bound beyond loopback without a token, not with one', async () => {
      const dir = tmp();
      writeFileSync(join(dir, 'token'), TOKEN);
      for (const tokenFile of [undefined, join(dir, 'token')]) {
        const lb = fakeLb([A]);
        const lines: string[] = [];
        (lb as { logger: unknown }).logger = createLogger({ level: 'info', write: (l) => lines.push(l) });
        const web = new LbHttp(lb, { at: { host: '0.0.0.0', port: 0 }, explicit: true, ...(tokenFile ? { tokenFile } : {}) });
        await web.listen();
        await web.close();
        const warned = lines.some((l) => /not on loopback and has no httpTokenFile/.test(l));
        expect(warned, lines.join('\n')).to.equal(tokenFile === undefined);
      }
      rmSync(dir, { recursive: true });
    });

    it('on loopback, serves only loopback Host names (DNS rebinding): 421 for any other; bound wider, any Host', async () => {
      const lb = fakeLb([A]);
      const wide = new LbHttp(fakeLb([A]), { at: { host: '0.0.0.0', port: 0 }, explicit: true });
      const wideAt = await wide.listen();
      const web = new LbHttp(lb, { at: { host: '127.0.0.1', port: 0 }, explicit: true });
      const at = await web.listen();
      const get = (host: string | undefined, port = at!.port) =>
        new Promise<{ status: number; body: string }>((resolve, reject) => {
          const req = request({ host: '127.0.0.1', port, path: '/api/status', setHost: false, headers: host === undefined ? {} : { host } }, (res) => {
            let body = '';
            res.on('data', (c: Buffer) => (body += c));
            res.on('end', () => resolve({ status: res.statusCode!, body }));
          });
          req.on('error', reject);
          req.end();
        });
      try {
        for (const ok of [`127.0.0.1:${at!.port}`, `localhost:${at!.port}`, 'localhost', `[::1]:${at!.port}`, '127.8.9.10']) {
          expect((await get(ok)).status, ok).to.equal(200);
        }
        for (const bad of ['evil.example', `evil.example:${at!.port}`, '10.0.0.1', 'localhost.evil.example', `[::2]:${at!.port}`]) {
          const r = await get(bad);
          expect(r.status, bad).to.equal(421);
          expect(JSON.parse(r.body)).to.include({ error: 'MISDIRECTED_REQUEST' });
          // The same request to a listener bound beyond loopback: it relies on its token, not on Host.
          expect((await get(bad, wideAt!.port)).status, `${bad} on 0.0.0.0`).to.equal(200);
        }
        // Raw requests: HTTP/1.0 without Host is served (no browser omits it, so no rebinding page
        // sent it); HTTP/1.0 with a foreign Host is not; HTTP/1.1 without Host is refused by Node (400).
        const raw = (text: string) =>
          new Promise<string>((resolve, reject) => {
            const c = connect(at!.port, '127.0.0.1', () => c.end(text));
            let out = '';
            c.on('data', (d: Buffer) => (out += d.toString('latin1')));
            c.on('end', () => resolve(out.split('\r\n')[0]!));
            c.on('error', reject);
          });
        expect(await raw('GET /api/status HTTP/1.0\r\n\r\n')).to.match(/^HTTP\/1\.[01] 200 /);
        expect(await raw('GET /api/status HTTP/1.0\r\nHost: evil.example\r\n\r\n')).to.match(/^HTTP\/1\.[01] 421 /);
        expect(await raw('GET /api/status HTTP/1.1\r\nConnection: close\r\n\r\n')).to.match(/^HTTP\/1\.1 400 /);
      } finally {
        await web.close();
        await wide.close();
      }
    });

    it('a default address in use is a warning and no listener; a configured one is an error', async () => {
      const busy = createServer();
      await new Promise<void>((r) => busy.listen(0, '127.0.0.1', () => r()));
      const port = (busy.address() as { port: number }).port;
      const lines: string[] = [];
      const logger = createLogger({ level: 'info', write: (l) => lines.push(l) });
      try {
        const quiet = await listen(createApp({ logger, token: undefined }).app, { host: '127.0.0.1', port }, false, logger, 'load balancer');
        expect(quiet).to.equal(undefined);
        expect(lines.join('\n')).to.match(/cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE; continuing without it/);
        let err: unknown;
        await listen(createApp({ logger, token: undefined }).app, { host: '127.0.0.1', port }, true, logger, 'load balancer').catch((e: unknown) => (err = e));
        expect(String(err)).to.match(/EADDRINUSE/);
        expect((err as { code?: string }).code).to.equal('QHCP_ERR_LISTEN');
      } finally {
        busy.close();
      }
    });
  });
});
