/**
 * The hooks: the order and arguments with which a real AgentServer and LoadBalancer (in this
 * process, on 127.0.0.1, port 0) call them, and containment: a tap that throws, rejects,
 * never resolves or never calls back is logged as a PluginError naming hook and plugin, the
 * core keeps working, and the check or pick it was part of fails in the documented way.
 * Also: every hook is documented in docs/plugins.md with its kind and failure mode.
 */
import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import { AgentServer } from '../core/roles/agent.ts';
import { LoadBalancer } from '../core/roles/loadbalancer.ts';
import { Core } from '../core/roles/core.ts';
import { buildConfig, type QhcpConfig } from '../core/config/config.ts';
import { createHooks, MetricsReport, ON_FAIL, toVerdict, type AlertEvent, type AuthRequest, type CheckResult, type CredentialsRequest, type HookName, type PickRequest, type Transition } from '../core/plugin/hooks.ts';
import { createLogger, type Logger } from '../core/util/log.ts';
import { connect } from '../core/transport/quic.ts';
import { Session } from '../core/protocol/session.ts';
import { QueryClient } from '../core/client/query.ts';
import { PeerError, PluginError } from '../core/errors.ts';
import RoundRobinPlugin from '../plugins/balancer/round-robin.ts';
import { build } from '../core/testing/index.ts';
import type { QhcpPlugin } from '../core/plugin/loader.ts';
import { waitUntil } from './helpers/procs.ts';

/** A logger keeping its JSON lines, to assert what was logged. */
function capture(): { logger: Logger; lines: string[]; pluginErrors(): Array<Record<string, unknown>> } {
  const lines: string[] = [];
  const logger = createLogger({ level: 'debug', json: true, write: (l) => lines.push(l), burst: 1000 });
  return {
    logger,
    lines,
    pluginErrors: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((o) => typeof o.hook === 'string' && typeof o.plugin === 'string'),
  };
}

const serverConfig = (over: Partial<QhcpConfig> = {}) => buildConfig({ serverIp: '127.0.0.1', serverPort: 0, sampleInterval: 0.1, pluginTimeout: 0.2, ...over }, undefined, {}).config;

const lbConfig = (serverPort: number, over: Partial<QhcpConfig> = {}) =>
  buildConfig(
    {
      servers: [`127.0.0.1:${serverPort}`],
      loadbalancerHost: '127.0.0.1',
      loadbalancerPort: 0,
      checkInterval: 0.5,
      checkTimeout: 0.45,
      reconnectInterval: 0.5,
      jitter: 0,
      pluginTimeout: 0.2,
      status: 'none',
      ...over,
    },
    undefined,
    {},
  ).config;

/** A metrics plugin reporting `x = 1`. */
const xMetric = (): QhcpPlugin => ({
  name: 'x-metric',
  apply(core) {
    core.hooks.metricDefinitions.tap('x-metric', (d) => [...d, { name: 'x', unit: '', help: 'always 1', plugin: 'x-metric' }]);
    core.hooks.collect.tap('x-metric', (r) => r.set('x', 1));
  },
});

/** Opens a checker session and sends HELLO with `token`; resolves with the ACK or the error. */
async function hello(port: number, token?: string): Promise<{ session: Session; result: unknown }> {
  const session = new Session(await connect({ host: '127.0.0.1', port, timeoutMs: 5000 }), { role: 'client', onMessage: () => {} });
  const result = await session.request('HELLO', { versions: [1], role: 'checker', node: 'hooks-test', ...(token ? { token } : {}) }, 5000).then(
    (m) => m,
    (e: unknown) => e,
  );
  return { session, result };
}

async function pickOnce(lbPort: number, key?: string): Promise<{ server: string | null; reason?: string }> {
  const q = await QueryClient.open({ host: '127.0.0.1', port: lbPort, timeoutMs: 5000 });
  try {
    return await q.pick(key);
  } finally {
    await q.close();
  }
}

describe('hooks', function () {
  this.timeout(30_000);

  describe('order and arguments on a real AgentServer', () => {
    it('calls apply, start, metricDefinitions, collect, ready, frame, verify, report, stop in that order with the documented arguments', async () => {
      const events: string[] = [];
      const args: Record<string, unknown[]> = {};
      const note = (name: string, ...a: unknown[]) => {
        events.push(name);
        args[name] ??= a;
      };
      const recorder: QhcpPlugin = {
        name: 'recorder',
        apply(core) {
          note('apply', core);
          core.hooks.start.tapPromise('recorder', async (c) => note('start', c));
          core.hooks.metricDefinitions.tap('recorder', (d) => (note('metricDefinitions', [...d]), [...d, { name: 'rec', unit: 'n', help: 'recorded', plugin: 'recorder', sampleIntervalMs: 100 }]));
          core.hooks.collect.tap('recorder', (r) => (note('collect', r), r.set('rec', 7)));
          core.hooks.ready.tapPromise('recorder', async (c) => note('ready', c));
          core.hooks.verify.tapPromise('recorder', async (req) => (note('verify', req), undefined));
          core.hooks.frame.tap('recorder', (dir, msg, s) => note(`frame:${dir}:${msg.type}`, s));
          core.hooks.report.tap('recorder', (m, s) => (note('report', { ...m }, s), m));
          core.hooks.stop.tapPromise('recorder', async (c) => note('stop', c));
        },
      };
      const server = new AgentServer(serverConfig(), capture().logger);
      await server.loadPlugins([xMetric(), recorder]);
      await server.start();
      const { session, result } = await hello(server.port, 'secret-token');
      expect((result as { type: string }).type).to.equal('ACK');
      expect((result as { body: { metrics: string[] } }).body.metrics).to.deep.equal(['x', 'rec']);
      const res = await session.request('HEALTH_REQUEST', { seq: 1 }, 5000);
      expect(res.type === 'HEALTH_RESPONSE' && res.body.metrics).to.deep.equal({ x: 1, rec: 7 });
      session.close();
      await server.stop();

      const first = (e: string) => events.indexOf(e);
      const order = ['apply', 'start', 'metricDefinitions', 'collect', 'ready', 'frame:in:HELLO', 'verify', 'frame:out:ACK', 'frame:in:HEALTH_REQUEST', 'report', 'frame:out:HEALTH_RESPONSE', 'stop'];
      for (const e of order) expect(first(e), `${e} was called`).to.be.greaterThan(-1);
      for (let i = 1; i < order.length; i++) expect(first(order[i]!), `${order[i - 1]} before ${order[i]}`).to.be.greaterThan(first(order[i - 1]!));
      expect(events.filter((e) => e === 'start' || e === 'ready' || e === 'stop')).to.deep.equal(['start', 'ready', 'stop']);

      for (const e of ['apply', 'start', 'ready', 'stop']) expect(args[e]![0], `${e} gets the core`).to.equal(server);
      expect(args.metricDefinitions![0]).to.deep.equal([{ name: 'x', unit: '', help: 'always 1', plugin: 'x-metric' }]);
      expect(args.collect![0]).to.be.instanceOf(MetricsReport);
      const verify = args.verify![0] as AuthRequest;
      expect(verify).to.include({ token: 'secret-token', node: 'hooks-test', role: 'checker' });
      expect(verify.remote).to.match(/^127\.0\.0\.1:\d+$/);
      const frameSession = args['frame:in:HELLO']![0] as { id: number; remote: string; role: string };
      expect(frameSession.role).to.equal('server');
      expect(frameSession.remote).to.equal(verify.remote);
      expect(args.report![0]).to.deep.equal({ x: 1, rec: 7 });
      expect((args.report![1] as { id: number }).id).to.equal(frameSession.id);
    });
  });

  describe('order and arguments on a real LoadBalancer', () => {
    it('calls start, alert(started), ready, credentials, checked, transition, alert(transition), pick, alert(stopped), stop', async () => {
      const tokens: Array<string | undefined> = [];
      const spy: QhcpPlugin = { name: 'token-spy', apply: (core) => core.hooks.verify.tap('token-spy', (req) => void tokens.push(req.token)) };
      const server = new AgentServer(serverConfig(), capture().logger);
      await server.loadPlugins([xMetric(), spy]);
      await server.start();
      const events: string[] = [];
      const seen: { credentials?: CredentialsRequest; checked?: [unknown, CheckResult]; transition?: Transition; alerts: AlertEvent[]; pick?: PickRequest; core: unknown[] } = { alerts: [], core: [] };
      const recorder: QhcpPlugin = {
        name: 'recorder',
        apply(core) {
          core.hooks.start.tapPromise('recorder', async (c) => void (events.push('start'), seen.core.push(c)));
          core.hooks.ready.tapPromise('recorder', async (c) => void (events.push('ready'), seen.core.push(c)));
          core.hooks.stop.tapPromise('recorder', async (c) => void (events.push('stop'), seen.core.push(c)));
          core.hooks.credentials.tapPromise('recorder', async (req) => {
            events.push('credentials');
            seen.credentials ??= req;
            return 'token-for-' + req.server;
          });
          core.hooks.checked.tap('recorder', (b, r) => {
            events.push('checked');
            seen.checked ??= [b, r];
          });
          core.hooks.transition.tap('recorder', (t) => {
            events.push(`transition:${t.to}`);
            seen.transition ??= t;
          });
          core.hooks.alert.tapPromise('recorder', async (e) => {
            events.push(`alert:${e.kind}`);
            seen.alerts.push(e);
          });
          core.hooks.pick.tap('recorder', (req) => {
            events.push('pick');
            seen.pick = req;
            return undefined; // let round-robin answer
          });
        },
      };
      const address = `127.0.0.1:${server.port}`;
      const lb = new LoadBalancer(lbConfig(server.port, { node: 'lb-under-test' }), capture().logger);
      await lb.loadPlugins([recorder, build(RoundRobinPlugin)]);
      await lb.start();
      try {
        await waitUntil(() => lb.backends()[0]!.state === 'UP', 20_000, 'the server to be UP');
        const picked = await pickOnce(lb.port, 'k1');
        expect(picked.server).to.equal(address);
      } finally {
        await lb.stop();
        await server.stop();
      }
      const first = (e: string) => events.indexOf(e);
      const order = ['start', 'ready', 'credentials', 'checked', 'transition:UP', 'alert:transition', 'pick', 'alert:stopped', 'stop'];
      for (let i = 1; i < order.length; i++) expect(first(order[i]!), `${order[i - 1]} before ${order[i]} in ${events.join(',')}`).to.be.greaterThan(first(order[i - 1]!)).and.greaterThan(-1);
      // The started alert is fired (not awaited) right before ready.
      expect(first('alert:started')).to.be.greaterThan(first('start')).and.lessThan(first('alert:transition'));
      expect(events.filter((e) => e === 'start' || e === 'ready' || e === 'stop')).to.deep.equal(['start', 'ready', 'stop']);
      for (const c of seen.core) expect(c).to.equal(lb);

      expect(seen.credentials).to.deep.equal({ server: address, node: 'lb-under-test' });
      expect(tokens[0], 'the credentials went into HELLO').to.equal(`token-for-${address}`);
      const [backend, result] = seen.checked!;
      expect((backend as { address: string }).address).to.equal(address);
      expect(result).to.include({ ok: true, error: null });
      expect(result.metrics).to.deep.equal({ x: 1 });
      expect(result.latencyMs).to.be.a('number');
      expect(seen.transition).to.include({ server: address, to: 'UP', failures: 0, lastError: null });
      expect(seen.transition!.from).to.be.oneOf(['UNKNOWN', 'DOWN']);
      expect(seen.transition!.reason).to.be.a('string').and.not.empty;
      expect(seen.transition!.metrics).to.deep.equal({ x: 1 });
      const started = seen.alerts.find((a) => a.kind === 'started')!;
      expect(started).to.include({ node: 'lb-under-test' });
      expect((started as { servers: string[] }).servers).to.deep.equal([address]);
      const alerted = seen.alerts.find((a) => a.kind === 'transition') as Extract<AlertEvent, { kind: 'transition' }>;
      expect(alerted.transition).to.deep.equal(seen.transition);
      expect(seen.alerts.at(-1)!.kind).to.equal('stopped');
      expect(seen.pick!.key).to.equal('k1');
      expect(seen.pick!.servers.map((s) => s.address)).to.deep.equal([address]);
      expect(seen.pick!.now).to.be.a('number');
    });
  });

  describe('containment (a bare Core, pluginTimeout 0.2 s)', () => {
    const make = () => {
      const cap = capture();
      const core = new Core('server', serverConfig({ pluginTimeout: 0.2 }), cap.logger);
      return { core, ...cap };
    };

    it('a throwing sync tap is logged as a PluginError with hook and plugin; the other taps still run', () => {
      const { core, pluginErrors } = make();
      const ran: string[] = [];
      core.hooks.transition.tap('thrower', () => {
        throw new Error('boom');
      });
      core.hooks.transition.tap('after', () => void ran.push('after'));
      const t: Transition = { server: 'a:1', from: 'UP', to: 'DOWN', reason: 'r', at: 0, failures: 3, successes: 0, lastError: 'e', metrics: {} };
      expect(() => core.hooks.transition.call(t)).not.to.throw();
      expect(ran).to.deep.equal(['after']);
      expect(pluginErrors()).to.have.length(1);
      expect(pluginErrors()[0]).to.include({ hook: 'transition', plugin: 'thrower', code: 'QHCP_ERR_PLUGIN_HOOK', msg: 'plugin thrower in hook transition threw: boom' });
      expect(core.pluginFailures.get('thrower')).to.equal(1);
      expect(core.lastPluginError).to.be.instanceOf(PluginError).and.include({ hook: 'transition', plugin: 'thrower' });
    });

    it('a rejecting promise tap is logged; the parallel hook still resolves with the others done', async () => {
      const { core, pluginErrors } = make();
      const ran: string[] = [];
      core.hooks.alert.tapPromise('rejecter', async () => {
        throw new Error('webhook down');
      });
      core.hooks.alert.tapPromise('fine', async () => void ran.push('fine'));
      await core.hooks.alert.promise({ kind: 'started', node: 'n', at: 0, servers: [] });
      expect(ran).to.deep.equal(['fine']);
      expect(pluginErrors()[0]).to.include({ hook: 'alert', plugin: 'rejecter', code: 'QHCP_ERR_PLUGIN_HOOK' });
    });

    it('a never-resolving promise tap is cut off after pluginTimeout and logged as a timeout; the report keeps the other values', async () => {
      const { core, pluginErrors } = make();
      core.hooks.collect.tapPromise('hanger', () => new Promise<void>(() => {}));
      core.hooks.collect.tap('fine', (r) => r.set('fine', 1));
      const report = new MetricsReport();
      await core.hooks.collect.promise(report);
      expect(report.values).to.deep.equal({ fine: 1 });
      expect(pluginErrors()[0]).to.include({ hook: 'collect', plugin: 'hanger', code: 'QHCP_ERR_PLUGIN_TIMEOUT', msg: 'plugin hanger in hook collect timed out' });
    });

    it('a callback tap that never calls back is timed out; one that calls back with an error is logged', async () => {
      const { core, pluginErrors } = make();
      core.hooks.collect.tapAsync('silent', () => {});
      core.hooks.collect.tapAsync('errback', (_r, cb) => cb(new Error('disk gone')));
      core.hooks.collect.tapAsync('fine', (r, cb) => (r.set('fine', 2), cb()));
      const report = new MetricsReport();
      await core.hooks.collect.promise(report);
      expect(report.values).to.deep.equal({ fine: 2 });
      const errs = pluginErrors();
      expect(errs.find((e) => e.plugin === 'silent')).to.include({ hook: 'collect', code: 'QHCP_ERR_PLUGIN_TIMEOUT' });
      expect(errs.find((e) => e.plugin === 'errback')).to.include({ hook: 'collect', code: 'QHCP_ERR_PLUGIN_HOOK', msg: 'plugin errback in hook collect threw: disk gone' });
    });

    it('a throwing waterfall tap passes the value on unchanged', () => {
      const { core } = make();
      core.hooks.report.tap('thrower', () => {
        throw new Error('no');
      });
      core.hooks.report.tap('double', (m) => Object.fromEntries(Object.entries(m).map(([k, v]) => [k, v * 2])));
      expect(core.hooks.report.call({ a: 1 }, undefined)).to.deep.equal({ a: 2 });
    });

    it('start: a failing tap rejects start-up with the PluginError (the only hook that propagates)', async () => {
      const { core } = make();
      core.hooks.start.tap('bad-start', () => {
        throw new Error('no queue');
      });
      const err = await core.hooks.start.promise(core).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).to.be.instanceOf(PluginError).and.include({ hook: 'start', plugin: 'bad-start', code: 'QHCP_ERR_PLUGIN_HOOK' });
    });

    it('verify: a throwing or hanging auth tap yields an INTERNAL_ERROR verdict (fail closed)', async () => {
      const { core } = make();
      core.hooks.verify.tapPromise('hang', () => new Promise(() => {}));
      const req: AuthRequest = { token: 't', node: 'n', remote: 'r', role: 'checker' };
      expect(await core.hooks.verify.promise(req)).to.deep.equal({ ok: false, kind: 'INTERNAL_ERROR', reason: 'auth plugin hang failed' });
    });

    it('verify: an answer that is not a verdict denies (fail closed); undefined abstains', () => {
      const invalid = { ok: false, kind: 'INTERNAL_ERROR', reason: 'auth plugin returned an invalid verdict' };
      expect(toVerdict(undefined)).to.equal(undefined);
      for (const v of [null, 'yes', true, {}, { ok: 'true' }, { ok: false, kind: 'NOPE', reason: 'r' }, { ok: false, kind: 'toString' }]) expect(toVerdict(v), JSON.stringify(v)).to.deep.equal(invalid);
      expect(toVerdict({ ok: true, subject: 'lb-1', extra: 1 })).to.deep.equal({ ok: true, subject: 'lb-1' });
      expect(toVerdict({ ok: true, subject: 5 })).to.deep.equal({ ok: true });
      expect(toVerdict({ ok: false, kind: 'AUTH_EXPIRED' })).to.deep.equal({ ok: false, kind: 'AUTH_EXPIRED', reason: 'AUTH_EXPIRED' });
    });

    it('credentials: a failing tap rejects (the check fails)', async () => {
      const { core } = make();
      core.hooks.credentials.tap('bad-creds', () => {
        throw new Error('no key');
      });
      const err = await core.hooks.credentials.promise({ server: 's:1', node: 'n' }).catch((e: unknown) => e);
      expect(err).to.be.instanceOf(PluginError).and.include({ hook: 'credentials', plugin: 'bad-creds' });
    });

    it('pick: a throwing balancer tap is skipped, the next balancer answers', () => {
      const { core } = make();
      core.hooks.pick.tap('bad', () => {
        throw new Error('boom');
      });
      const rr = build(RoundRobinPlugin);
      rr.apply(core);
      const view = { address: 'a:1', state: 'UP' as const, metrics: {}, reportedAt: null, weight: 1, latencyMs: null, verdict: 'SERVING' as const, agentAdmin: 'READY' as const, adminState: 'READY' as const, reason: null };
      expect(core.hooks.pick.call({ servers: [view], key: undefined, now: 0 })).to.equal(view);
    });
  });

  describe('containment on the wire', () => {
    let server: AgentServer | undefined;
    let lb: LoadBalancer | undefined;
    afterEach(async () => {
      await lb?.stop();
      await server?.stop();
      lb = server = undefined;
    });

    it('verify: a throwing auth plugin rejects the HELLO with INTERNAL_ERROR; a verdict becomes a coded ERROR; the server keeps serving', async () => {
      const cap = capture();
      server = new AgentServer(serverConfig(), cap.logger);
      const auth: QhcpPlugin = {
        name: 'flaky-auth',
        family: 'auth',
        apply(core) {
          core.hooks.verify.tapPromise('flaky-auth', async (req) => {
            if (req.token === 'boom') throw new Error('key store unreachable');
            if (req.token === 'hang') return new Promise(() => {});
            if (req.token === 'odd') return { ok: false, kind: 'NOT_A_CODE', reason: 'x' } as never;
            if (req.token !== 'good') return { ok: false, kind: 'AUTH_INVALID', reason: 'unknown token' };
            return { ok: true, subject: 'lb' };
          });
        },
      };
      await server.loadPlugins([xMetric(), auth]);
      await server.start();
      for (const [token, reason] of [
        ['boom', 'auth plugin flaky-auth failed'],
        ['hang', 'auth plugin flaky-auth failed'],
        ['odd', 'auth plugin returned an invalid verdict'],
      ] as const) {
        const { result } = await hello(server.port, token);
        expect(result, token).to.be.instanceOf(PeerError);
        expect((result as PeerError).kind).to.equal('INTERNAL_ERROR');
        expect((result as PeerError).message).to.equal(reason);
      }
      const denied = (await hello(server.port, 'bad')).result as PeerError;
      expect(denied).to.be.instanceOf(PeerError);
      expect(denied.kind).to.equal('AUTH_INVALID');
      expect(denied.message).to.equal('unknown token');
      const ok = await hello(server.port, 'good');
      expect((ok.result as { type: string }).type).to.equal('ACK');
      ok.session.close();
      expect(server.stats.authFailures).to.equal(4);
      const errs = cap.pluginErrors();
      expect(errs.map((e) => [e.plugin, e.hook, e.code])).to.deep.include.members([
        ['flaky-auth', 'verify', 'QHCP_ERR_PLUGIN_HOOK'],
        ['flaky-auth', 'verify', 'QHCP_ERR_PLUGIN_TIMEOUT'],
      ]);
    });

    it('a throwing or garbage-producing metrics plugin leaves the other metrics flowing and the server UP', async () => {
      const cap = capture();
      server = new AgentServer(serverConfig(), cap.logger);
      const bad: QhcpPlugin = {
        name: 'bad-metrics',
        apply(core) {
          // Declares a name the protocol cannot carry and repeats another plugin's: both dropped.
          core.hooks.metricDefinitions.tap('bad-metrics', (d) => [...d, { name: 'no spaces', unit: '', help: '', plugin: 'bad-metrics' }, { name: 'x', unit: '', help: '', plugin: 'bad-metrics' }]);
          core.hooks.collect.tap('bad-metrics', (r) => {
            r.set('no spaces', 1);
          });
          core.hooks.report.tap('bad-metrics', (m) => ({ ...m, 'bad name': 3, nan: Number.NaN, str: 'x' as unknown as number }));
        },
      };
      await server.loadPlugins([xMetric(), bad]);
      await server.start();
      expect(server.definitions.map((d) => d.name)).to.deep.equal(['x']);
      lb = new LoadBalancer(lbConfig(server.port), capture().logger);
      await lb.loadPlugins([build(RoundRobinPlugin)]);
      await lb.start();
      const b = lb.records()[0]!;
      await waitUntil(() => b.state === 'UP' && b.checks >= 2, 20_000, 'two checks and UP');
      expect(b.metrics).to.deep.equal({ x: 1 });
      expect(cap.pluginErrors().find((e) => e.plugin === 'bad-metrics')).to.include({ hook: 'collect', code: 'QHCP_ERR_PLUGIN_HOOK' });
    });

    it('credentials: a throwing tap fails the check before any connection; the server goes DOWN with the plugin named', async () => {
      server = new AgentServer(serverConfig(), capture().logger);
      await server.loadPlugins([xMetric()]);
      await server.start();
      const creds: QhcpPlugin = {
        name: 'bad-creds',
        apply(core) {
          core.hooks.credentials.tap('bad-creds', () => {
            throw new Error('signing key missing');
          });
        },
      };
      lb = new LoadBalancer(lbConfig(server.port, { maxFailAttempts: 1 }), capture().logger);
      await lb.loadPlugins([creds, build(RoundRobinPlugin)]);
      await lb.start();
      const b = lb.records()[0]!;
      await waitUntil(() => b.state === 'DOWN', 20_000, 'the server to be DOWN');
      expect(b.lastError).to.equal('plugin bad-creds in hook credentials threw: signing key missing');
      expect(server.stats.accepted, 'no connection was made').to.equal(0);
    });

    it('pick: a throwing balancer makes PICK answer server null with the reason; with a second balancer, it answers', async () => {
      server = new AgentServer(serverConfig(), capture().logger);
      await server.loadPlugins([xMetric()]);
      await server.start();
      const thrower: QhcpPlugin = {
        name: 'bad-balancer',
        family: 'balancer',
        apply(core) {
          core.hooks.pick.tap('bad-balancer', (req) => {
            if (req.key === 'fine') return undefined;
            throw new Error('weights table empty');
          });
        },
      };
      const cap = capture();
      lb = new LoadBalancer(lbConfig(server.port), cap.logger);
      await lb.loadPlugins([thrower]);
      await lb.start();
      await waitUntil(() => lb!.backends()[0]!.state === 'UP', 20_000, 'the server to be UP');
      expect(await pickOnce(lb.port)).to.deep.equal({ server: null, reason: 'balancer failed: plugin bad-balancer in hook pick threw: weights table empty' });
      expect(await pickOnce(lb.port, 'fine')).to.deep.equal({ server: null, reason: 'the balancer chose no server' });
      expect(cap.pluginErrors()[0]).to.include({ hook: 'pick', plugin: 'bad-balancer' });
      // The load balancer is unharmed: with a working balancer after the bad one, PICK answers.
      build(RoundRobinPlugin).apply(lb);
      expect((await pickOnce(lb.port)).server).to.equal(`127.0.0.1:${server.port}`);
    });

    it('pick: with no balancer plugin at all, PICK says so', async () => {
      server = new AgentServer(serverConfig(), capture().logger);
      await server.loadPlugins([xMetric()]);
      await server.start();
      lb = new LoadBalancer(lbConfig(server.port), capture().logger);
      await lb.loadPlugins([]);
      await lb.start();
      await waitUntil(() => lb!.backends()[0]!.state === 'UP', 20_000, 'the server to be UP');
      expect(await pickOnce(lb.port)).to.deep.equal({ server: null, reason: 'no balancer plugin is configured' });
    });

    it('start: a failing start tap aborts AgentServer.start before anything listens', async () => {
      const s = new AgentServer(serverConfig(), capture().logger);
      await s.loadPlugins([{ name: 'bad-start', apply: (core) => core.hooks.start.tapPromise('bad-start', async () => Promise.reject(new Error('nope'))) }]);
      const err = await s.start().catch((e: unknown) => e);
      expect(err).to.be.instanceOf(PluginError).and.include({ hook: 'start', plugin: 'bad-start' });
      expect(s.port, 'no listener').to.equal(0);
      await s.stop();
    });
  });

  describe('sampling', () => {
    it('never calls a collect tap more often than its metrics declared sampleIntervalMs allows', async () => {
      const calls = { slow: 0, fast: 0 };
      const plugin = (name: 'slow' | 'fast', sampleIntervalMs?: number): QhcpPlugin => ({
        name,
        apply(core) {
          core.hooks.metricDefinitions.tap(name, (d) => [...d, { name, unit: '', help: '', plugin: name, ...(sampleIntervalMs ? { sampleIntervalMs } : {}) }]);
          core.hooks.collect.tap(name, (r) => r.set(name, ++calls[name]));
        },
      });
      const server = new AgentServer(serverConfig({ sampleInterval: 0.05 }), capture().logger);
      await server.loadPlugins([plugin('slow', 60_000), plugin('fast')]);
      await server.start();
      try {
        await waitUntil(() => calls.fast >= 6, 20_000, 'six samples');
        expect(calls.slow).to.equal(1);
        // The carried value is still reported, with its original (older) sample time in ageMs.
        expect(server.metricsFor(undefined).metrics).to.include({ slow: 1 });
        expect(server.metricsFor(undefined).metrics.fast).to.be.at.least(6);
      } finally {
        await server.stop();
      }
    });
  });

  describe('report age', () => {
    it('is the age of loadScore when the report has one, not of a slow metric carried along', async () => {
      const slow: QhcpPlugin = {
        name: 'slow',
        apply(core) {
          core.hooks.metricDefinitions.tap('slow', (d) => [...d, { name: 'slow', unit: '', help: '', plugin: 'slow', sampleIntervalMs: 60_000 }]);
          core.hooks.collect.tap('slow', (r) => r.set('slow', 1));
        },
      };
      let scores = 0;
      const score: QhcpPlugin = {
        name: 'score',
        apply(core) {
          core.hooks.collect.tap('score', (r) => r.set('loadScore', (++scores % 10) / 10));
        },
      };
      const server = new AgentServer(serverConfig({ sampleInterval: 0.05 }), capture().logger);
      await server.loadPlugins([slow, score]);
      await server.start();
      try {
        // Wait until the slow value is clearly older than the fresh loadScore samples.
        await waitUntil(() => scores >= 20, 20_000, 'twenty loadScore samples');
        const r = server.metricsFor(undefined);
        expect(r.metrics).to.include({ slow: 1 });
        expect(r.ageMs).to.be.below(500);
      } finally {
        await server.stop();
      }
    });
  });

  describe('docs/plugins.md', () => {
    const doc = () => readFileSync(new URL('../docs/plugins.md', import.meta.url), 'utf8');
    /** Rows of the hooks reference table: | `name` | Kind | role | when | arguments | returns | on failure | */
    const table = (): Map<string, { kind: string; onFail: string }> => {
      const text = doc();
      const begin = text.indexOf('<!-- hooks:begin -->');
      const end = text.indexOf('<!-- hooks:end -->');
      expect(begin, 'hooks table markers').to.be.greaterThan(-1);
      const rows = new Map<string, { kind: string; onFail: string }>();
      for (const line of text.slice(begin, end).split('\n')) {
        const cells = line.split('|').map((c) => c.trim());
        const name = /^`(\w+)`$/.exec(cells[1] ?? '')?.[1];
        if (!name) continue;
        expect(rows.has(name), `${name} listed once`).to.equal(false);
        rows.set(name, { kind: cells[2]!.replace(/`/g, ''), onFail: cells[cells.length - 2]! });
      }
      return rows;
    };

    it('documents every hook of createHooks() with its tapable kind, and no other', () => {
      const hooks = createHooks();
      const rows = table();
      expect([...rows.keys()].sort()).to.deep.equal(Object.keys(hooks).sort());
      for (const [name, hook] of Object.entries(hooks)) expect(rows.get(name)!.kind, name).to.equal(hook.constructor.name);
    });

    it('states each hook’s failure handling as the guard implements it', () => {
      const words = { skip: /skipped/i, deny: /INTERNAL_ERROR/, throw: /fails|aborts/i } as const;
      for (const [name, row] of table()) expect(row.onFail, name).to.match(words[ON_FAIL[name as HookName]]);
    });
  });
});
