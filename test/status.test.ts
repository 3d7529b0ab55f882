/**
 * The status view (core/cli/status.ts): the redrawn table on a terminal, one plain line per server
 * otherwise, JSON lines for scripts; and which of them `status: auto` picks.
 */
import { expect } from 'chai';
import { render, renderTable, renderLines, renderJson, resolveFormat, statusFrame, duration, StatusPrinter, adminText } from '../core/cli/status.ts';
import type { ServerStatus } from '../core/protocol/messages.ts';

const NOW = Date.UTC(2026, 0, 2, 3, 4, 5);

function server(over: Partial<ServerStatus>): ServerStatus {
  return {
    address: '127.0.0.1:4243',
    state: 'UP',
    since: NOW - 75_000,
    failures: 0,
    successes: 12,
    latencyMs: 1.234,
    metrics: { cpu: 12.34, memory: 56.78, load1: 0.5, loadScore: 0.57 },
    ageMs: 10,
    reportedAt: NOW - 500,
    lastError: null,
    checks: 12,
    verdict: 'SERVING',
    reason: 'first good check',
    agentAdmin: 'READY',
    adminState: 'READY',
    weight: 1,
    ...over,
  };
}

const SERVERS: ServerStatus[] = [
  server({}),
  server({ address: '127.0.0.1:4244', state: 'DOWN', failures: 3, successes: 0, latencyMs: null, metrics: {}, lastError: 'RESPONSE_TIMEOUT: no HEALTH_RESPONSE within 250 ms', reason: null, since: NOW - 4_000 }),
  server({ address: '[::1]:4245', state: 'DRAINING', since: NOW - 7_200_000 - 180_000, agentAdmin: 'DRAIN', reason: 'draining: deploy 42' }),
  server({ address: 'db.example:4243', state: 'UNKNOWN', metrics: {}, latencyMs: null, successes: 0, checks: 0, since: NOW, reason: null }),
  server({ address: '127.0.0.1:4246/web', service: 'web', state: 'DOWN', verdict: 'NOT_SERVING', reason: 'not serving: http: 503\x1b[31m', weight: 0.5, adminState: 'MAINT', since: NOW - 1000 }),
];

describe('status view', () => {
  describe(resolveFormat.name, () => {
    it('auto is the table on a terminal and lines anywhere else', () => {
      expect(resolveFormat('auto', true)).to.equal('table');
      expect(resolveFormat('auto', false)).to.equal('lines');
    });
    it('an explicit format wins over the terminal check', () => {
      for (const f of ['table', 'lines', 'json', 'none'] as const) {
        expect(resolveFormat(f, true)).to.equal(f);
        expect(resolveFormat(f, false)).to.equal(f);
      }
    });
  });

  describe(renderTable.name, () => {
    const text = renderTable(SERVERS, NOW);
    const lines = text.split('\n');

    it('has a title with the UP count, a header and one row per server', () => {
      expect(lines).to.have.length(2 + SERVERS.length);
      expect(lines[0]).to.equal(`qhcp load balancer - 1/5 UP, 2 DOWN, 1 DRAINING, 1 UNKNOWN - ${new Date(NOW).toISOString()}`);
      expect(lines[1]!.split(/\s{2,}/)).to.deep.equal(['SERVER', 'STATE', 'VERDICT', 'ADMIN', 'WEIGHT', 'CPU', 'MEM', 'LOAD1', 'SCORE', 'LATENCY', 'FAILS', 'IN STATE', 'REASON']);
    });

    it('aligns columns: each header word starts where its values start', () => {
      const header = lines[1]!;
      for (const col of ['STATE', 'VERDICT', 'ADMIN', 'WEIGHT', 'CPU', 'MEM', 'LATENCY', 'FAILS', 'IN STATE']) {
        const at = header.indexOf(col);
        for (const row of lines.slice(2)) expect(row[at - 1], `column ${col} in "${row}"`).to.equal(' ');
        for (const row of lines.slice(2)) expect(row[at], `column ${col} in "${row}"`).not.to.equal(' ');
      }
    });

    it('shows state, verdict, admin, weight, metrics, latency, failures, time in state and the reason', () => {
      expect(lines[2]).to.match(/^127\.0\.0\.1:4243\s+UP\s+SERVING\s+READY\s+1\s+12\.3%\s+56\.8%\s+0\.50\s+0\.57\s+1\.2ms\s+0\s+1m15s$/);
      expect(lines[3]).to.match(/^127\.0\.0\.1:4244\s+DOWN\s+SERVING\s+READY\s+1\s+-\s+-\s+-\s+-\s+-\s+3\s+4s\s+RESPONSE_TIMEOUT: no HEALTH_RESPONSE within 250 ms$/);
      expect(lines[4]).to.match(/^\[::1\]:4245\s+DRAINING\s+SERVING\s+DRAIN\(agent\)\s.*\s2h03m\s+draining: deploy 42$/);
      expect(lines[5]).to.match(/^db\.example:4243\s+UNKNOWN\s.*\s0s$/);
      expect(lines[6]).to.match(/^127\.0\.0\.1:4246\/web\s+DOWN\s+NOT_SERVING\s+MAINT\(lb\)\s+0\.5\s.*\s1s\s+not serving: http: 503\\x1b\[31m$/);
    });

    it('never lets a peer\'s escape sequence through', () => {
      const evil = server({ state: 'DOWN', reason: 'x\x1b]0;pwned\x07y', lastError: 'a\rb' });
      expect(renderTable([evil], NOW)).not.to.match(/[\x00-\x08\x0b-\x1f\x7f]/);
      expect(renderLines([evil], NOW)).not.to.match(/[\x00-\x1f\x7f]/);
      expect(renderLines([evil], NOW)).to.contain('reason="x\\\\x1b]0;pwned\\\\x07y"');
    });

    it('names whose admin state is in force', () => {
      expect(adminText({ agentAdmin: 'READY', adminState: 'READY' })).to.equal('READY');
      expect(adminText({ agentAdmin: 'DRAIN', adminState: 'MAINT' })).to.equal('MAINT(lb)');
      expect(adminText({ agentAdmin: 'MAINT', adminState: 'DRAIN' })).to.equal('MAINT(agent)');
      expect(adminText({ agentAdmin: 'DRAIN', adminState: 'DRAIN' })).to.equal('DRAIN(both)');
      expect(adminText({})).to.equal('READY');
    });

    it('an empty list is a title and a header', () => {
      expect(renderTable([], NOW).split('\n')).to.have.length(2);
    });

    it('adds a CHECKED BY column (before REASON) when some server says which group members checked it', () => {
      const group = [server({ checkedBy: ['lb-1', 'lb-2'] }), server({ address: '127.0.0.1:4244', state: 'DOWN', reason: 'gone', checkedBy: [] }), server({ address: '127.0.0.1:4245' })];
      const [, header, ...rows] = renderTable(group, NOW).split('\n');
      expect(header!.split(/\s{2,}/).slice(-3)).to.deep.equal(['IN STATE', 'CHECKED BY', 'REASON']);
      expect(rows[0]).to.match(/\s1m15s\s+lb-1,lb-2$/);
      expect(rows[1]).to.match(/\s-\s+gone$/);
      expect(rows[2]).to.match(/\s1m15s\s+-$/);
      expect(renderTable(SERVERS, NOW).split('\n')[1]).not.to.include('CHECKED BY');
    });

    it('shows a slow-start weight as "effective of configured", and panic mode in the title; lines and JSON carry both', () => {
      const pool = [server({ weight: 2, effectiveWeight: 0.35, panic: true }), server({ address: '127.0.0.1:4244', state: 'DOWN', panic: true })];
      const [title, , first] = renderTable(pool, NOW).split('\n');
      expect(title).to.equal('qhcp load balancer - 1/2 UP, 1 DOWN, PANIC: picks go to every known backend - 2026-01-02T03:04:05.000Z');
      expect(first).to.match(/^127\.0\.0\.1:4243\s+UP\s+SERVING\s+READY\s+0\.35 of 2\s/);
      expect(renderTable(SERVERS, NOW).split('\n')[0]).not.to.include('PANIC');
      expect(renderLines(pool, NOW)).to.match(/ weight=2 slow_start_weight=0\.35 panic=true/);
      expect(JSON.parse(renderJson(pool, NOW).split('\n')[0]!)).to.include({ weight: 2, effectiveWeight: 0.35, panic: true });
    });
  });

  describe(renderLines.name, () => {
    const lines = renderLines(SERVERS, NOW).split('\n');

    it('one key=value line per server, each with the time', () => {
      expect(lines).to.have.length(SERVERS.length);
      for (const l of lines) expect(l.startsWith(new Date(NOW).toISOString() + ' server=')).to.equal(true);
      expect(lines[0]).to.equal(`${new Date(NOW).toISOString()} server=127.0.0.1:4243 state=UP cpu=12.3% mem=56.8% load1=0.50 score=0.57 latency=1.2ms failures=0 in_state=1m15s verdict=SERVING admin=READY weight=1`);
      expect(lines[4]).to.match(/ service=web verdict=NOT_SERVING admin=MAINT\(lb\) weight=0\.5 reason="not serving: http: 503\\\\x1b\[31m"$/);
    });

    it('quotes the last error so a line stays parseable', () => {
      const m = / last_error=(".*")$/.exec(lines[1]!);
      expect(m).to.not.equal(null);
      expect(JSON.parse(m![1]!)).to.equal('RESPONSE_TIMEOUT: no HEALTH_RESPONSE within 250 ms');
      expect(lines[0]).not.to.include('last_error');
    });

    it('has no terminal control characters', () => {
      expect(renderLines(SERVERS, NOW)).not.to.match(/\x1b/);
    });
  });

  describe(renderJson.name, () => {
    it('one JSON object per line, the status fields plus the time', () => {
      const lines = renderJson(SERVERS, NOW).split('\n');
      expect(lines).to.have.length(SERVERS.length);
      lines.forEach((l, i) => expect(JSON.parse(l)).to.deep.equal({ time: NOW, ...SERVERS[i] }));
    });
  });

  describe(statusFrame.name, () => {
    it('the table clears the screen and redraws from the top', () => {
      const f = statusFrame('table', SERVERS, NOW);
      expect(f.startsWith('\x1b[H\x1b[2J')).to.equal(true);
      expect(f.slice('\x1b[H\x1b[2J'.length)).to.equal(renderTable(SERVERS, NOW) + '\n');
    });
    it('lines and json append, ending with a newline', () => {
      expect(statusFrame('lines', SERVERS, NOW)).to.equal(renderLines(SERVERS, NOW) + '\n');
      expect(statusFrame('json', SERVERS, NOW)).to.equal(renderJson(SERVERS, NOW) + '\n');
    });
    it('render() dispatches on the format', () => {
      expect(render('table', SERVERS, NOW)).to.equal(renderTable(SERVERS, NOW));
      expect(render('lines', SERVERS, NOW)).to.equal(renderLines(SERVERS, NOW));
      expect(render('json', SERVERS, NOW)).to.equal(renderJson(SERVERS, NOW));
    });
  });

  describe(StatusPrinter.name, () => {
    const make = (format: 'lines' | 'json' | 'table', summaryMs: number) => {
      const out: string[] = [];
      return { p: new StatusPrinter(format, summaryMs, (t) => out.push(t)), out };
    };
    const a = server({ address: 'a:1' });
    const b = server({ address: 'b:1' });

    it('lines: every server at the first tick with a summary line, then only what changed, then a summary again', () => {
      const { p, out } = make('lines', 60_000);
      p.update([a, b], NOW);
      expect(out).to.have.length(1);
      const first = out[0]!.trimEnd().split('\n');
      expect(first[0]).to.match(/ summary 2\/2 UP \(next summary in 60s; changes print at once\)$/);
      expect(first.slice(1).map((l) => / server=(\S+)/.exec(l)![1])).to.deep.equal(['a:1', 'b:1']);
      for (let i = 1; i <= 10; i++) p.update([a, b], NOW + i * 1000);
      expect(out, 'nothing changed: nothing printed').to.have.length(1);
      const bDown = { ...b, state: 'DOWN' as const, failures: 3, reason: '3 consecutive failed checks' };
      p.update([a, bDown], NOW + 11_000, true);
      expect(out).to.have.length(2);
      expect(out[1]!.trimEnd().split('\n')).to.have.length(1);
      expect(out[1]).to.match(/ server=b:1 state=DOWN /);
      p.update([a, bDown], NOW + 12_000);
      expect(out, 'the same state again: nothing').to.have.length(2);
      p.update([a, bDown], NOW + 60_000);
      expect(out).to.have.length(3);
      expect(out[2]!.trimEnd().split('\n')).to.have.length(3);
      expect(out[2]).to.match(/summary 1\/2 UP, 1 DOWN/);
    });

    it('a server starting to fail (before DOWN) and a removed server print a line', () => {
      const { p, out } = make('lines', 60_000);
      p.update([a, b], NOW);
      p.update([a, { ...b, failures: 1, lastError: 'RESPONSE_TIMEOUT' }], NOW + 1000);
      expect(out[1]).to.match(/server=b:1 state=UP .*last_error="RESPONSE_TIMEOUT"/);
      p.update([a], NOW + 2000, true);
      expect(out[2]).to.match(/server=b:1 removed\n$/);
    });

    it('json: the same, as JSON objects', () => {
      const { p, out } = make('json', 60_000);
      p.update([a], NOW);
      p.update([{ ...a, state: 'DEGRADED', verdict: 'DEGRADED' }], NOW + 1000, true);
      const objs = out.join('').trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(objs.map((o) => o.summary ?? o.state)).to.deep.equal(['1/1 UP (next summary in 60s; changes print at once)', 'UP', 'DEGRADED']);
    });

    it('summary 0: every server every tick, as before; the table redraws every tick; changes alone print nothing then', () => {
      const { p, out } = make('lines', 0);
      p.update([a, b], NOW);
      p.update([a, b], NOW + 1000);
      p.update([a, b], NOW + 1500, true);
      expect(out).to.deep.equal([statusFrame('lines', [a, b], NOW), statusFrame('lines', [a, b], NOW + 1000)]);
      const t = make('table', 60_000);
      t.p.update([a], NOW);
      t.p.update([a], NOW + 1000);
      expect(t.out).to.deep.equal([statusFrame('table', [a], NOW), statusFrame('table', [a], NOW + 1000)]);
    });

    it('bounds the output: 3 servers, 8 minutes of 1 s ticks, one change: a few dozen lines, not 1440', () => {
      const { p, out } = make('lines', 60_000);
      const c = server({ address: 'c:1' });
      for (let t = 0; t < 480; t++) p.update([a, b, t > 100 && t < 110 ? { ...c, state: 'DOWN' } : c], NOW + t * 1000);
      const lines = out.join('').trimEnd().split('\n').length;
      expect(lines).to.equal(8 * 4 + 2);
    });
  });

  describe(duration.name, () => {
    it('seconds, minutes, hours', () => {
      expect([0, 999, 59_999, 60_000, 3_599_000, 3_600_000, 90_061_000, -5].map(duration)).to.deep.equal(['0s', '0s', '59s', '1m00s', '59m59s', '1h00m', '25h01m', '0s']);
    });
  });
});
