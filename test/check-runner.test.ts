/**
 * The agent's check runner (core/check/runner.ts) and check building (core/check/kinds.ts),
 * with tiny check kinds defined here: rise/fall, timeouts (a run that honours its AbortSignal
 * and one that ignores it), a kind that throws or returns garbage, output made safe and
 * bounded, verdicts per service and overall, MAINT from a `maint` outcome, the operator's admin
 * state and weight, and the change callback that drives the agent's pushes. Config problems are
 * reported by path.
 */
import { expect } from 'chai';
import { CheckRunner, DEFAULT_SERVICE, outputLine, nextRunDelay, WATCH_GAP_MS, type CheckSpec } from '../core/check/runner.ts';
import { buildChecks } from '../core/check/kinds.ts';
import { ConfigError } from '../core/errors.ts';
import { createLogger } from '../core/util/log.ts';
import { validateBody, type AgentHealth } from '../core/protocol/messages.ts';
import type { Check, CheckKind, CheckOutcome, CheckStatus } from '../core/check/types.ts';
import { waitUntil, sleep } from './helpers/procs.ts';

const logger = createLogger({ level: 'silent' });

/** A check whose next outcome the test sets. */
class Scripted implements Check {
  next: CheckOutcome = { status: 'passing', output: 'ok' };
  runs = 0;
  closed = false;
  async run(): Promise<CheckOutcome> {
    this.runs++;
    return this.next;
  }
  close(): void {
    this.closed = true;
  }
  set(status: CheckStatus, output: string = status): void {
    this.next = { status, output };
  }
}

function spec(check: Check, over: Partial<CheckSpec> = {}): CheckSpec {
  return { service: DEFAULT_SERVICE, path: 'checks[0]', name: 'scripted', type: 'scripted', intervalMs: 20, timeoutMs: 200, rise: 1, fall: 1, check, ...over };
}

describe('check runner', function () {
  this.timeout(20_000);
  const runners: CheckRunner[] = [];
  afterEach(async () => {
    for (const r of runners.splice(0)) await r.stop();
  });
  const runner = (specs: CheckSpec[], services: string[], opts: Partial<ConstructorParameters<typeof CheckRunner>[2]> = {}) => {
    const r = new CheckRunner(specs, services, { logger, ...opts });
    runners.push(r);
    return r;
  };

  it('with no checks: SERVING, READY, weight 100, no services field; valid on the wire', () => {
    const h = runner([], []).health();
    expect(h).to.deep.equal({ verdict: 'SERVING', admin: 'READY', weight: 100 });
    validateBody('HEALTH_REPORT', { metrics: {}, ageMs: 0, ...h });
  });

  it('runs every check once before start() resolves, then on its own interval', async () => {
    const a = new Scripted();
    a.set('critical', 'connection refused');
    const r = runner([spec(a)], [DEFAULT_SERVICE]);
    await r.start();
    expect(a.runs).to.equal(1);
    expect(r.health()).to.deep.include({ verdict: 'NOT_SERVING', reason: 'scripted: connection refused' });
    await waitUntil(() => a.runs >= 5, 5000, 'five runs at a 20 ms interval');
  });

  it('spaces runs start to start: the time a run takes does not stretch the interval', () => {
    // random 0.5 = no spread. A run that started at t=1000 and ended at t=1300: next at 2000.
    expect(nextRunDelay(1000, 1300, 1000, 0.5)).to.equal(700);
    // The spread stays ±10% of the interval around the start-to-start time.
    expect(nextRunDelay(1000, 1000, 1000, 0)).to.equal(900);
    expect(nextRunDelay(1000, 1000, 1000, 0.999999)).to.equal(1100);
    // A run longer than its interval: the next one at once, never a negative or zero delay.
    expect(nextRunDelay(1000, 2500, 1000, 0.5)).to.equal(1);
  });

  it('runs a check early when it says its outcome moved (watch), at most once per WATCH_GAP_MS', async () => {
    const a = new Scripted();
    let changed: (() => void) | undefined;
    const watching: Check = { run: () => a.run(), watch: (cb) => (changed = cb) };
    const r = runner([spec(watching, { intervalMs: 60_000 })], [DEFAULT_SERVICE]);
    await r.start();
    expect(a.runs).to.equal(1);
    expect(changed, 'watch registered after the first run').to.be.a('function');
    a.set('maint', 'deploying');
    changed!();
    await waitUntil(() => r.health().admin === 'MAINT', 5000, 'MAINT long before the 60 s interval');
    // A storm of notifications: bounded by the gap, not one run each.
    const before = a.runs;
    const t0 = Date.now();
    for (let i = 0; i < 1000; i++) changed!();
    await sleep(350);
    const ran = a.runs - before;
    const bound = Math.ceil((Date.now() - t0) / WATCH_GAP_MS) + 1;
    expect(ran, `${ran} runs for 1000 notifications`).to.be.within(1, bound);
    await r.stop();
    changed!();
    await sleep(WATCH_GAP_MS + 50);
    expect(a.runs - before, 'stopped: a notification runs nothing').to.equal(ran);
  });

  it('applies fall and rise: N consecutive bad runs to fail, M good ones to pass again', async () => {
    const a = new Scripted();
    const r = runner([spec(a, { fall: 3, rise: 2, intervalMs: 10_000 })], [DEFAULT_SERVICE]);
    await r.start();
    // Drive runs by hand through the private scheduler-free path: a long interval, manual runOnce.
    const runOnce = () => (r as unknown as { runOnce(c: unknown): Promise<void>; checks: unknown[] }).runOnce((r as unknown as { checks: unknown[] }).checks[0]);
    a.set('critical', 'down');
    await runOnce();
    await runOnce();
    expect(r.health().verdict, 'after 2 of 3').to.equal('SERVING');
    a.set('passing');
    await runOnce(); // a good run breaks the streak
    a.set('critical', 'down');
    await runOnce();
    await runOnce();
    expect(r.health().verdict, 'streak restarted').to.equal('SERVING');
    await runOnce();
    expect(r.health().verdict, 'after 3 of 3').to.equal('NOT_SERVING');
    a.set('passing');
    await runOnce();
    expect(r.health().verdict, 'after 1 of 2 good').to.equal('NOT_SERVING');
    await runOnce();
    expect(r.health().verdict, 'after 2 of 2 good').to.equal('SERVING');
  });

  it('a run that outlasts its timeout is critical, and its AbortSignal is aborted', async () => {
    let aborted = false;
    const slow: Check = {
      run: (signal) =>
        new Promise((resolve) => {
          signal.addEventListener('abort', () => {
            aborted = true;
            resolve({ status: 'passing', output: 'too late' });
          });
        }),
    };
    const r = runner([spec(slow, { timeoutMs: 50, intervalMs: 60_000 })], [DEFAULT_SERVICE]);
    await r.start();
    expect(aborted).to.equal(true);
    expect(r.health()).to.deep.include({ verdict: 'NOT_SERVING', reason: 'scripted: timed out after 50 ms' });
  });

  it('a run that hangs and ignores its signal: critical at the timeout, and no second run piles up', async () => {
    let started = 0;
    const hang: Check = {
      run: () => {
        started++;
        return new Promise(() => {});
      },
    };
    const r = runner([spec(hang, { timeoutMs: 30, intervalMs: 30 })], [DEFAULT_SERVICE]);
    await r.start();
    expect(r.health().verdict).to.equal('NOT_SERVING');
    await waitUntil(() => (r.status()[0]!.runs >= 4 ? true : undefined), 5000, 'four more scheduled runs');
    expect(started, 'runs started while the first still hangs').to.equal(1);
    expect(r.status()[0]!.output).to.match(/previous run still in progress/);
  });

  it('a kind that throws, rejects or returns garbage gives a critical outcome with that reason, never a crash', async () => {
    const throws: Check = {
      run: () => {
        throw new Error('boom');
      },
    };
    const rejects: Check = { run: async () => Promise.reject(new TypeError('bad socket')) };
    const garbage: Check = { run: async () => ({ status: 'great' }) as unknown as CheckOutcome };
    const r = runner(
      [spec(throws, { name: 'throws', intervalMs: 60_000 }), spec(rejects, { name: 'rejects', intervalMs: 60_000 }), spec(garbage, { name: 'garbage', intervalMs: 60_000 })],
      [DEFAULT_SERVICE],
    );
    await r.start();
    const out = Object.fromEntries(r.status().map((c) => [c.name, [c.status, c.output]]));
    expect(out.throws).to.deep.equal(['critical', 'check failed: boom']);
    expect(out.rejects![0]).to.equal('critical');
    expect(out.rejects![1]).to.match(/bad socket/);
    expect(out.garbage![0]).to.equal('critical');
    expect(out.garbage![1]).to.match(/^check returned an invalid outcome/);
  });

  it("keeps a check's output to one safe, bounded line: escapes never reach a terminal raw", async () => {
    const a = new Scripted();
    a.set('critical', '\x1b[2J\x1b]0;pwned\x07first line\r\nsecond line' + 'x'.repeat(5000));
    const r = runner([spec(a, { intervalMs: 60_000 })], [DEFAULT_SERVICE]);
    await r.start();
    const h = r.health();
    expect(h.reason).to.not.match(/[\x00-\x1f\x7f]/);
    expect(h.reason).to.include('\\x1b[2J');
    expect(h.reason).to.not.include('second line');
    expect(h.reason!.length).to.be.at.most(256);
    validateBody('HEALTH_RESPONSE', { seq: 1, metrics: {}, ageMs: 0, ...h });
    expect(outputLine('  \n  spaced  \nmore')).to.equal('spaced');
  });

  it('verdict per service is its worst check; overall the worst service, named in the reason', async () => {
    const web1 = new Scripted();
    const web2 = new Scripted();
    const api = new Scripted();
    const base = new Scripted();
    web2.set('warning', 'slow: 900 ms');
    const r = runner(
      [
        spec(base, { name: 'disk', intervalMs: 60_000 }),
        spec(web1, { service: 'web', name: 'http', intervalMs: 60_000 }),
        spec(web2, { service: 'web', name: 'latency', intervalMs: 60_000 }),
        spec(api, { service: 'api', name: 'tcp', intervalMs: 60_000 }),
      ],
      [DEFAULT_SERVICE, 'web', 'api'],
    );
    await r.start();
    let h = r.health();
    expect(h.verdict).to.equal('DEGRADED');
    expect(h.reason).to.equal('web: latency: slow: 900 ms');
    expect(Object.keys(h.services!)).to.deep.equal(['web', 'api']);
    expect(h.services!.web).to.deep.include({ verdict: 'DEGRADED', reason: 'latency: slow: 900 ms' });
    expect(h.services!.api).to.deep.include({ verdict: 'SERVING' });
    expect(h.services!.api).to.not.have.property('reason');
    // The default service counts for the overall verdict without a name of its own.
    base.set('critical', 'disk full');
    await (r as unknown as { runOnce(c: unknown): Promise<void>; checks: unknown[] }).runOnce((r as unknown as { checks: unknown[] }).checks[0]);
    h = r.health();
    expect(h.verdict).to.equal('NOT_SERVING');
    expect(h.reason).to.equal('disk: disk full');
    validateBody('HEALTH_REPORT', { metrics: {}, ageMs: 0, ...h });
  });

  it('a maint outcome puts the agent in MAINT at once (no fall), and lifts it at once', async () => {
    const file = new Scripted();
    file.set('passing', 'no maintenance file');
    const changes: AgentHealth[] = [];
    const r = runner([spec(file, { name: 'file', fall: 5, rise: 5, intervalMs: 20 })], [DEFAULT_SERVICE], { onChange: (h) => changes.push(h) });
    await r.start();
    expect(r.health().admin).to.equal('READY');
    file.set('maint', 'maintenance file /tmp/x exists');
    await waitUntil(() => r.health().admin === 'MAINT', 5000, 'MAINT');
    expect(r.health()).to.deep.include({ verdict: 'SERVING', reason: 'file: maintenance file /tmp/x exists' });
    file.set('passing', 'no maintenance file');
    await waitUntil(() => r.health().admin === 'READY', 5000, 'READY again');
    expect(changes.map((c) => c.admin)).to.deep.equal(['MAINT', 'READY']);
  });

  it('operator admin state and weight: change callbacks only when the wire value changes', async () => {
    const changes: AgentHealth[] = [];
    const r = runner([], [], { onChange: (h) => changes.push(h) });
    await r.start();
    r.setAdmin('DRAIN', 'deploy 1.4');
    r.setAdmin('DRAIN', 'deploy 1.4 again');
    r.setWeight(50);
    r.setWeight(50);
    r.setAdmin('READY');
    expect(changes.map((c) => [c.admin, c.weight, c.reason])).to.deep.equal([
      ['DRAIN', 100, 'deploy 1.4'],
      ['DRAIN', 50, 'deploy 1.4 again'],
      ['READY', 50, undefined],
    ]);
    expect(() => r.setWeight(257)).to.throw(RangeError);
    expect(() => r.setWeight(1.5)).to.throw(RangeError);
  });

  it('a verdict change calls back once, not on every run; since moves with the verdict only', async () => {
    const a = new Scripted();
    const changes: AgentHealth[] = [];
    const r = runner([spec(a, { service: 'web', intervalMs: 15 })], ['web'], { onChange: (h) => changes.push(h) });
    await r.start();
    const since0 = r.health().services!.web!.since;
    await sleep(100);
    expect(changes).to.have.length(0);
    a.set('critical', 'refused');
    await waitUntil(() => changes.length >= 1, 5000, 'a change');
    await sleep(100);
    expect(changes).to.have.length(1);
    expect(changes[0]!.services!.web!.verdict).to.equal('NOT_SERVING');
    expect(changes[0]!.services!.web!.since).to.be.greaterThan(since0 - 1);
  });

  it('stop() ends the schedule and closes every check', async () => {
    const a = new Scripted();
    const r = runner([spec(a, { intervalMs: 10 })], [DEFAULT_SERVICE]);
    await r.start();
    await r.stop();
    const n = a.runs;
    await sleep(80);
    expect(a.runs).to.equal(n);
    expect(a.closed).to.equal(true);
  });
});

describe('building checks from the config', () => {
  /** A kind defined here: `{ type: 'probe', target: 'ok' | ... }`; create() refuses target "nowhere". */
  const probe: CheckKind<{ target: string; mode: string }> = {
    type: 'probe',
    schema: {
      type: 'object',
      additionalProperties: false,
      required: ['target'],
      properties: { target: { type: 'string', minLength: 1 }, mode: { enum: ['fast', 'slow'], default: 'fast' } },
    },
    create(o) {
      if (o.target === 'nowhere') throw new ConfigError([`target "nowhere" cannot be reached`]);
      return { run: async () => ({ status: 'passing', output: `${o.target} ${o.mode}` }) };
    },
  };

  it('validates each check against its kind, fills defaults, names checks, groups services', async () => {
    const { specs, services } = await buildChecks({
      checks: [{ type: 'probe', target: 'a' }],
      services: { web: [{ type: 'probe', target: 'b', interval: 2, timeout: 1, rise: 4, fall: 5 }, { type: 'probe', target: 'c', mode: 'slow' }] },
      userKinds: [probe],
      logger,
    });
    expect(services).to.deep.equal([DEFAULT_SERVICE, 'web']);
    expect(specs.map((s) => [s.service, s.path, s.name, s.intervalMs, s.timeoutMs, s.rise, s.fall])).to.deep.equal([
      [DEFAULT_SERVICE, 'checks[0]', 'probe', 5000, 2500, 2, 3],
      ['web', 'services.web[0]', 'probe#1', 2000, 1000, 4, 5],
      ['web', 'services.web[1]', 'probe#2', 5000, 2500, 2, 3],
    ]);
    expect(await specs[2]!.check.run(new AbortController().signal)).to.deep.equal({ status: 'passing', output: 'c slow' });
  });

  it('reports every problem by path: unknown type, bad option, a check that cannot work, a repeated name', async () => {
    let err: unknown;
    try {
      await buildChecks({
        checks: [{ type: 'nosuch' }, { type: 'probe', target: 'nowhere' }],
        services: { web: [{ type: 'probe', target: 'x', colour: 'red' }, { type: 'probe', name: 'p', target: 'a' }, { type: 'probe', name: 'p', target: 'b' }] },
        userKinds: [probe],
        logger,
      });
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(ConfigError);
    const problems = (err as ConfigError).problems;
    expect(problems.some((p) => /^checks\[0\]\.type: unknown check type "nosuch"/.test(p)), problems.join('\n')).to.equal(true);
    expect(problems).to.include('checks[1]: target "nowhere" cannot be reached');
    expect(problems.some((p) => /^services\.web\[0\]\.colour: is not a known option/.test(p)), problems.join('\n')).to.equal(true);
    expect(problems.some((p) => /^services\.web\[2\]\.name: "p" is used twice in service web/.test(p)), problems.join('\n')).to.equal(true);
  });

  it('refuses something that is not a check kind from a plugin', async () => {
    let err: unknown;
    try {
      await buildChecks({ checks: [], userKinds: [{ type: 'x' }], logger });
    } catch (e) {
      err = e;
    }
    expect((err as ConfigError).problems[0]).to.match(/not a check kind/);
  });
});
