import { expect } from 'chai';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import LogAlertPlugin from '../../plugins/alert/log.ts';
import WebhookAlertPlugin from '../../plugins/alert/webhook.ts';
import ExecAlertPlugin from '../../plugins/alert/exec.ts';
import { Damper } from '../../plugins/alert/damper.ts';
import { validateOptions, type PluginConstructor } from '../../core/plugin/loader.ts';
import { ConfigError } from '../../core/errors.ts';
import type { AlertEvent } from '../../core/plugin/hooks.ts';
import { waitUntil } from '../helpers/procs.ts';
import { build, fakeCore } from './fake-core.ts';

let at = Date.parse('2026-01-01T00:00:00Z');
function transition(server: string, from: 'UP' | 'DOWN' | 'UNKNOWN', to: 'UP' | 'DOWN', reason = `${from} to ${to}`): AlertEvent {
  at += 1000;
  return { kind: 'transition', node: 'lb-test', transition: { server, from, to, reason, at, failures: to === 'DOWN' ? 3 : 0, successes: to === 'UP' ? 1 : 0, lastError: to === 'DOWN' ? 'RESPONSE_TIMEOUT: no answer' : null, metrics: { loadScore: 0.25 } } };
}

describe('alert plugins', () => {
  describe('Damper (flap damping, shared)', () => {
    it('delivers everything at once when minIntervalMs is 0', () => {
      const got: Array<[string, number]> = [];
      const d = new Damper(0, (e, n) => got.push([e.kind === 'transition' ? e.transition.to : e.kind, n]));
      d.submit(transition('a', 'UP', 'DOWN'));
      d.submit(transition('a', 'DOWN', 'UP'));
      expect(got).to.deep.equal([['DOWN', 0], ['UP', 0]]);
    });

    it('holds a flapping server to one alert per interval and reports what it suppressed', async () => {
      const got: Array<{ server: string; to: string; suppressed: number }> = [];
      const d = new Damper(300, (e, n) => e.kind === 'transition' && got.push({ server: e.transition.server, to: e.transition.to, suppressed: n }));
      d.submit(transition('a', 'UP', 'DOWN'));
      d.submit(transition('a', 'DOWN', 'UP'));
      d.submit(transition('a', 'UP', 'DOWN'));
      d.submit(transition('a', 'DOWN', 'UP'));
      d.submit(transition('b', 'UP', 'DOWN'));
      expect(got).to.deep.equal([{ server: 'a', to: 'DOWN', suppressed: 0 }, { server: 'b', to: 'DOWN', suppressed: 0 }], 'other servers are not held back');
      expect(d.held).to.equal(1);
      // When the window ends, the latest state goes out with the count of those dropped.
      await waitUntil(() => got.length === 3, 5000, 'the held alert', 20);
      expect(got[2]).to.deep.equal({ server: 'a', to: 'UP', suppressed: 2 });
      expect(d.held).to.equal(0);
    });

    it('passes start/stop through and flushes held alerts on demand', () => {
      const got: string[] = [];
      const d = new Damper(60_000, (e, n) => got.push(`${e.kind}:${n}`));
      d.submit({ kind: 'started', node: 'lb', at: 1, servers: ['a'] });
      d.submit(transition('a', 'UNKNOWN', 'UP'));
      d.submit(transition('a', 'UP', 'DOWN'));
      d.submit({ kind: 'stopped', node: 'lb', at: 2, servers: ['a'] });
      expect(got).to.deep.equal(['started:0', 'transition:0', 'stopped:0']);
      d.flush();
      expect(got).to.deep.equal(['started:0', 'transition:0', 'stopped:0', 'transition:0']);
    });
  });

  describe('log', () => {
    it('writes one readable line per transition, or one JSON line', async () => {
      for (const json of [false, true]) {
        const lines: string[] = [];
        const p = Object.assign(build(LogAlertPlugin, { json }), { write: (l: string) => void lines.push(l) });
        const core = fakeCore('loadbalancer');
        p.apply(core);
        await core.hooks.alert.promise(transition('10.0.0.1:4243', 'UP', 'DOWN', '3 consecutive failed checks'));
        await core.hooks.alert.promise({ kind: 'started', node: 'lb-test', at, servers: ['x', 'y'] });
        expect(lines).to.have.length(2);
        if (json) {
          const o = JSON.parse(lines[0]!);
          expect(o).to.include({ event: 'transition', server: '10.0.0.1:4243', from: 'UP', to: 'DOWN', reason: '3 consecutive failed checks', suppressed: 0, at });
          expect(JSON.parse(lines[1]!)).to.include({ event: 'started', node: 'lb-test' });
        } else {
          expect(lines[0]).to.match(/^\S+Z ALERT 10\.0\.0\.1:4243 UP -> DOWN: 3 consecutive failed checks$/);
          expect(lines[1]).to.match(/ALERT load balancer lb-test started \(2 servers\)$/);
        }
      }
    });

    it('says how many transitions damping suppressed', async () => {
      const lines: string[] = [];
      const p = Object.assign(build(LogAlertPlugin, { json: false, minIntervalMs: 60_000 }), { write: (l: string) => void lines.push(l) });
      const core = fakeCore('loadbalancer');
      p.apply(core);
      for (const [f, t] of [['UP', 'DOWN'], ['DOWN', 'UP'], ['UP', 'DOWN'], ['DOWN', 'UP']] as const) await core.hooks.alert.promise(transition('s', f, t));
      await core.hooks.stop.promise(core);
      expect(lines).to.have.length(2);
      expect(lines[1]).to.match(/s DOWN -> UP: DOWN to UP \(2 more transitions suppressed\)$/);
    });
  });

  describe('webhook (real HTTP server on 127.0.0.1)', () => {
    let server: Server;
    let url: string;
    let requests: Array<{ at: number; body: Record<string, unknown>; headers: IncomingMessage['headers'] }>;
    let respond: (req: IncomingMessage, res: ServerResponse, n: number) => void;

    beforeEach(async () => {
      requests = [];
      respond = (_req, res) => res.end('ok');
      server = createServer((req, res) => {
        let data = '';
        req.setEncoding('utf8').on('data', (d: string) => (data += d));
        req.on('end', () => {
          requests.push({ at: Date.now(), body: JSON.parse(data) as Record<string, unknown>, headers: req.headers });
          respond(req, res, requests.length);
        });
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
      url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook?token=secret`;
    });
    afterEach(async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    });

    function hook(options: Record<string, unknown>) {
      const p = build(WebhookAlertPlugin, { url, minIntervalMs: 0, ...options });
      const core = fakeCore('loadbalancer');
      p.apply(core);
      return { p, core };
    }

    it('POSTs the event as JSON with the configured headers', async () => {
      const { p, core } = hook({ headers: { authorization: 'Bearer t0k' } });
      await core.hooks.alert.promise(transition('10.0.0.1:4243', 'UP', 'DOWN'));
      expect(await p.drain(10_000)).to.equal(true);
      expect(requests).to.have.length(1);
      expect(requests[0]!.headers['content-type']).to.equal('application/json');
      expect(requests[0]!.headers.authorization).to.equal('Bearer t0k');
      expect(requests[0]!.body).to.include({ event: 'transition', node: 'lb-test', server: '10.0.0.1:4243', from: 'UP', to: 'DOWN', lastError: 'RESPONSE_TIMEOUT: no answer', suppressed: 0 });
      expect(p.stats).to.include({ sent: 1, failed: 0, retries: 0 });
    });

    it('retries 5xx with growing backoff until it is accepted', async () => {
      respond = (_req, res, n) => {
        res.statusCode = n <= 2 ? 500 : 200;
        res.end();
      };
      const { p, core } = hook({ retries: 3, backoffMs: 100 });
      await core.hooks.alert.promise(transition('a', 'UP', 'DOWN'));
      expect(await p.drain(10_000)).to.equal(true);
      expect(requests).to.have.length(3);
      expect(p.stats).to.include({ sent: 1, failed: 0, retries: 2 });
      // Lower bounds only: timers never fire early.
      expect(requests[1]!.at - requests[0]!.at).to.be.at.least(95);
      expect(requests[2]!.at - requests[1]!.at).to.be.at.least(195);
      expect(p.backoff(1)).to.equal(100);
      expect(p.backoff(3)).to.equal(400);
    });

    it('gives up after the bounded retries, and does not retry a 4xx', async () => {
      respond = (_req, res) => {
        res.statusCode = 503;
        res.end();
      };
      const { p, core } = hook({ retries: 2, backoffMs: 10 });
      await core.hooks.alert.promise(transition('a', 'UP', 'DOWN'));
      expect(await p.drain(10_000)).to.equal(true);
      expect(requests).to.have.length(3);
      expect(p.stats).to.include({ sent: 0, failed: 1 });
      expect(core.logged(/alert not delivered/)[0]).to.include({ error: 'HTTP 503' });
      expect(JSON.stringify(core.lines)).to.not.include('token=secret', 'the URL query is not logged');

      respond = (_req, res) => {
        res.statusCode = 400;
        res.end();
      };
      requests = [];
      await core.hooks.alert.promise(transition('a', 'DOWN', 'UP'));
      expect(await p.drain(10_000)).to.equal(true);
      expect(requests).to.have.length(1);
      expect(p.stats.failed).to.equal(2);
    });

    it('times out a receiver that does not answer, then retries', async () => {
      respond = (_req, res, n) => {
        if (n > 1) res.end('ok'); // the first request is left hanging
      };
      const { p, core } = hook({ timeoutMs: 200, retries: 1, backoffMs: 10 });
      await core.hooks.alert.promise(transition('a', 'UP', 'DOWN'));
      expect(await p.drain(10_000)).to.equal(true);
      expect(requests).to.have.length(2);
      expect(p.stats).to.include({ sent: 1, retries: 1 });

      respond = () => {}; // now nothing is answered
      await core.hooks.alert.promise(transition('a', 'DOWN', 'UP'));
      expect(await p.drain(10_000)).to.equal(true);
      expect(p.stats.failed).to.equal(1);
      expect(core.logged(/alert not delivered/)[0]).to.include({ error: 'timed out after 200 ms' });
    });

    it('bounds its queue: drops the oldest waiting alert and counts it with a warning', async () => {
      const held: ServerResponse[] = [];
      respond = (_req, res) => held.push(res);
      const { p, core } = hook({ queueSize: 3, timeoutMs: 10_000, retries: 0 });
      for (let i = 1; i <= 10; i++) await core.hooks.alert.promise(transition(`s${i}`, 'UP', 'DOWN'));
      // One in flight (s1), three waiting (s8, s9, s10), six dropped (s2..s7).
      expect(p.stats.dropped).to.equal(6);
      expect(p.pending).to.equal(4);
      const warn = core.logged(/queue full/);
      expect(warn).to.have.length(6);
      expect(warn.at(-1)).to.include({ dropped: 6 });
      // Let the receiver answer the held request and everything from now on.
      await waitUntil(() => held.length === 1, 5000, 'the first request');
      respond = (_req, res) => res.end('ok');
      held[0]!.end('ok');
      expect(await p.drain(10_000)).to.equal(true);
      expect(requests.map((r) => r.body.server)).to.deep.equal(['s1', 's8', 's9', 's10']);
    });

    it('damps a flapping server: one POST, then the latest state with the suppressed count', async () => {
      const { p, core } = hook({ minIntervalMs: 300 });
      await core.hooks.alert.promise(transition('a', 'UP', 'DOWN'));
      await core.hooks.alert.promise(transition('a', 'DOWN', 'UP'));
      await core.hooks.alert.promise(transition('a', 'UP', 'DOWN'));
      await waitUntil(() => requests.length === 2, 5000, 'the held alert');
      expect(requests.map((r) => [r.body.to, r.body.suppressed])).to.deep.equal([['DOWN', 0], ['DOWN', 1]]);
      await p.drain(1000);
    });

    it('rejects a missing or non-http url', () => {
      expect(() => validateOptions(WebhookAlertPlugin as unknown as PluginConstructor, {}, 'p')).to.throw(ConfigError, /url/);
      expect(() => validateOptions(WebhookAlertPlugin as unknown as PluginConstructor, { url: 'ftp://x/' }, 'p')).to.throw(ConfigError, /url/);
      expect(() => build(WebhookAlertPlugin, { url: 'http://' })).to.throw(/Invalid URL/);
    });
  });

  describe('exec (real commands)', () => {
    let dir: string;
    beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'qhcp-exec-'))));
    afterEach(() => rmSync(dir, { recursive: true, force: true }));

    it('runs the command with the event on stdin and in QHCP_* variables', async () => {
      const out = join(dir, 'event.json');
      const p = build(ExecAlertPlugin, { command: 'sh', args: ['-c', 'cat > "$OUT"; env | grep ^QHCP_ | sort > "$OUT.env"'], env: { OUT: out }, minIntervalMs: 0 });
      const core = fakeCore('loadbalancer');
      p.apply(core);
      await core.hooks.alert.promise(transition('10.0.0.7:4243', 'UP', 'DOWN', 'three failed checks'));
      expect(await p.drain(10_000)).to.equal(true);
      expect(JSON.parse(readFileSync(out, 'utf8'))).to.include({ event: 'transition', server: '10.0.0.7:4243', from: 'UP', to: 'DOWN', reason: 'three failed checks' });
      const env = Object.fromEntries(readFileSync(`${out}.env`, 'utf8').trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
      expect(env).to.include({ QHCP_EVENT: 'transition', QHCP_NODE: 'lb-test', QHCP_SERVER: '10.0.0.7:4243', QHCP_FROM: 'UP', QHCP_TO: 'DOWN', QHCP_REASON: 'three failed checks', QHCP_LAST_ERROR: 'RESPONSE_TIMEOUT: no answer', QHCP_SUPPRESSED: '0' });
      expect(p.stats).to.include({ runs: 1, failed: 0 });
    });

    it('kills a command (and what it started) that outlives the timeout', async () => {
      const pidFile = join(dir, 'child.pid');
      const p = build(ExecAlertPlugin, { command: 'sh', args: ['-c', `sleep 30 & echo $! > '${pidFile}'; wait`], timeoutMs: 300, killGraceMs: 500, minIntervalMs: 0 });
      const core = fakeCore('loadbalancer');
      p.apply(core);
      const r = await p.runOne(transition('a', 'UP', 'DOWN'), 0);
      expect(r.timedOut).to.equal(true);
      expect(r.signal).to.be.oneOf(['SIGTERM', 'SIGKILL']);
      expect(p.stats.timedOut).to.equal(1);
      expect(core.logged(/alert command failed/)[0]).to.include({ timedOut: '300 ms' });
      // The grandchild `sleep` went with its process group (a zombie awaiting its reaper counts as gone).
      const pid = Number(readFileSync(pidFile, 'utf8'));
      await waitUntil(() => {
        try {
          process.kill(pid, 0);
        } catch {
          return true;
        }
        const stat = existsSync(`/proc/${pid}/stat`) ? readFileSync(`/proc/${pid}/stat`, 'utf8') : '';
        return / Z /.test(stat.slice(stat.lastIndexOf(')')));
      }, 5000, 'the sleep to be gone');
    });

    it('reports a failing or missing command without throwing', async () => {
      const core = fakeCore('loadbalancer');
      const failing = build(ExecAlertPlugin, { command: 'sh', args: ['-c', 'echo bad news >&2; exit 3'], minIntervalMs: 0 });
      failing.apply(core);
      const r = await failing.runOne(transition('a', 'UP', 'DOWN'), 0);
      expect(r).to.include({ code: 3, timedOut: false, stderr: 'bad news' });
      expect(core.logged(/alert command failed/)[0]).to.include({ code: 3, stderr: 'bad news' });
      const missing = build(ExecAlertPlugin, { command: join(dir, 'no-such-command'), minIntervalMs: 0 });
      const m = await missing.runOne(transition('a', 'UP', 'DOWN'), 0);
      expect(m.code).to.equal(null);
      expect(m.stderr).to.match(/ENOENT/);
      expect(existsSync(join(dir, 'no-such-command'))).to.equal(false);
      expect(() => validateOptions(ExecAlertPlugin as unknown as PluginConstructor, {}, 'p')).to.throw(ConfigError, /command/);
    });
  });
});

describe('tapDampedQueue (shared by webhook and exec)', () => {
  it('feeds alerts through the damper; on stop flushes held alerts, drains, and counts what is left', async () => {
    const { tapDampedQueue, SerialQueue } = await import('../../plugins/alert/queue.ts');
    const { Damper } = await import('../../plugins/alert/damper.ts');
    const core = fakeCore('loadbalancer');
    const delivered: string[] = [];
    // The first delivery never finishes: everything behind it stays queued.
    const queue = new SerialQueue<string>(10, (item) => (delivered.push(item), new Promise<void>(() => {})));
    const damper = new Damper(60_000, (e) => queue.push(e.kind === 'transition' ? `${e.transition.from}->${e.transition.to}` : e.kind));
    tapDampedQueue(core, 'q-test', { damper, queue }, 50, (left) => ['q-test: unfinished', { left }]);
    await core.hooks.alert.promise(transition('s', 'UP', 'DOWN'));
    await core.hooks.alert.promise(transition('s', 'DOWN', 'UP')); // held by the damper
    expect(delivered).to.deep.equal(['UP->DOWN']);
    await core.hooks.stop.promise(core);
    // The held alert was flushed into the queue behind the hung delivery; the queue did not
    // drain, so the waiting alert (the flushed one) was dropped and counted.
    const warned = core.logged(/q-test: unfinished/);
    expect(warned).to.have.length(1);
    expect(warned[0]).to.include({ left: 1 });
    expect(queue.size).to.equal(1); // only the hung delivery remains
  });
});
