/**
 * SIGHUP reloads an agent's config file, with a real `qhcp server` process and a checker session
 * spoken directly on loopback: checks and services replaced (the new ones run once before they
 * answer), the operator's admin state kept, the session kept open, one summary line naming what
 * needs a restart; a config that does not load, or a check that does not build, leaves the
 * running checks in place and the process serving.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { connect } from '../../core/transport/quic.ts';
import { Session } from '../../core/protocol/session.ts';
import { SUPPORTED_VERSIONS, type Message } from '../../core/protocol/messages.ts';
import { runQhcp, startServer, stopAll, waitUntil } from '../helpers/procs.ts';

type Health = Extract<Message, { type: 'HEALTH_RESPONSE' }>['body'];

describe('agent SIGHUP: reload the config file (real process)', function () {
  this.timeout(120_000);
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-agent-reload-'));
  });
  after(async () => {
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  });

  it('replaces checks and services, keeps the admin state and the sessions; an invalid config changes nothing', async () => {
    const file = join(dir, 'qhcp.config.json');
    const sock = join(dir, 'ctl.sock');
    const exec = (ok: boolean) => ({ type: 'exec', command: [ok ? 'true' : 'false'], interval: 0.2 });
    const write = (c: object) => writeFileSync(file, JSON.stringify({ controlSocket: sock, ...c }));
    write({ services: { web: [exec(true)] } });
    const { proc, port } = await startServer({ cwd: dir, args: ['--config', file] });

    const s = new Session(await connect({ host: '127.0.0.1', port, timeoutMs: 10_000 }), { role: 'client', onMessage: () => {} });
    await s.request('HELLO', { versions: [...SUPPORTED_VERSIONS], role: 'checker', node: 'reload-test' }, 10_000);
    let seq = 0;
    const health = async () => ((await s.request('HEALTH_REQUEST', { seq: ++seq }, 10_000)) as Extract<Message, { type: 'HEALTH_RESPONSE' }>).body;
    const services = (h: Health) => Object.fromEntries(Object.entries(h.services ?? {}).map(([k, v]) => [k, v.verdict]));
    expect(services(await health())).to.deep.equal({ web: 'SERVING' });

    // The operator drains the agent; a reload must not undo that.
    const drained = await runQhcp(['drain', '--socket', sock, '--reason', 'deploy'], { cwd: dir, timeoutMs: 30_000 });
    expect(drained.code, drained.stderr).to.equal(0);

    // web now fails, api is new; drainGrace changed too (needs a restart).
    write({ services: { web: [exec(false)], api: [exec(true)] }, drainGrace: 7 });
    let from = proc.output.length;
    proc.signal('SIGHUP');
    const line = await proc.waitFor(/config reloaded: .*/, 30_000, from);
    expect(line[0]).to.match(/config reloaded: checks 1 -> 2, \+service api; needs a restart \(not applied\): drainGrace/);
    const after = await health();
    // (exit 1 is a warning in the Nagios convention: DEGRADED.)
    expect(services(after)).to.deep.equal({ web: 'DEGRADED', api: 'SERVING' });
    expect(after.admin).to.equal('DRAIN');
    expect(s.isClosed, 'the session survives a reload').to.equal(false);

    // A check type that does not exist: the reload fails, the running checks stay.
    write({ services: { web: [{ type: 'no-such-kind' }] } });
    from = proc.output.length;
    proc.signal('SIGHUP');
    const failed = await proc.waitFor(/config reload failed, the running configuration stays: .*/, 30_000, from);
    expect(failed[0]).to.match(/no-such-kind/);
    // A file that does not parse: the same.
    writeFileSync(file, '{ not json');
    from = proc.output.length;
    proc.signal('SIGHUP');
    await proc.waitFor(/config reload failed, the running configuration stays/, 30_000, from);
    expect(proc.running).to.equal(true);
    await waitUntil(async () => {
      const h = await health();
      return h.services?.web?.verdict === 'DEGRADED' && h.services?.api?.verdict === 'SERVING';
    }, 10_000, 'the previous checks still answering');
    s.close('done');
  });
});
