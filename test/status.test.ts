/**
 * The status view (core/cli/status.ts): the redrawn table on a terminal, one plain line per server
 * otherwise, JSON lines for scripts; and which of them `status: auto` picks.
 */
import { expect } from 'chai';
import { render, renderTable, renderLines, renderJson, resolveFormat, statusFrame, duration } from '../core/cli/status.ts';
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
    ...over,
  };
}

const SERVERS: ServerStatus[] = [
  server({}),
  server({ address: '127.0.0.1:4244', state: 'DOWN', failures: 3, successes: 0, latencyMs: null, metrics: {}, lastError: 'RESPONSE_TIMEOUT: no HEALTH_RESPONSE within 250 ms', since: NOW - 4_000 }),
  server({ address: '[::1]:4245', state: 'DRAINING', since: NOW - 7_200_000 - 180_000 }),
  server({ address: 'db.example:4243', state: 'UNKNOWN', metrics: {}, latencyMs: null, successes: 0, checks: 0, since: NOW }),
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
      expect(lines[0]).to.equal(`qhcp load balancer - 1/4 UP - ${new Date(NOW).toISOString()}`);
      expect(lines[1]!.split(/\s{2,}/)).to.deep.equal(['SERVER', 'STATE', 'CPU', 'MEM', 'LOAD1', 'SCORE', 'LATENCY', 'FAILS', 'IN STATE', 'LAST ERROR']);
    });

    it('aligns columns: each header word starts where its values start', () => {
      const header = lines[1]!;
      for (const col of ['STATE', 'CPU', 'MEM', 'LATENCY', 'FAILS', 'IN STATE']) {
        const at = header.indexOf(col);
        for (const row of lines.slice(2)) expect(row[at - 1], `column ${col} in "${row}"`).to.equal(' ');
        for (const row of lines.slice(2)) expect(row[at], `column ${col} in "${row}"`).not.to.equal(' ');
      }
    });

    it('shows state, metrics, latency, failures, time in state and the last error', () => {
      expect(lines[2]).to.match(/^127\.0\.0\.1:4243\s+UP\s+12\.3%\s+56\.8%\s+0\.50\s+0\.57\s+1\.2ms\s+0\s+1m15s$/);
      expect(lines[3]).to.match(/^127\.0\.0\.1:4244\s+DOWN\s+-\s+-\s+-\s+-\s+-\s+3\s+4s\s+RESPONSE_TIMEOUT: no HEALTH_RESPONSE within 250 ms$/);
      expect(lines[4]).to.match(/^\[::1\]:4245\s+DRAINING\s.*\s2h03m$/);
      expect(lines[5]).to.match(/^db\.example:4243\s+UNKNOWN\s.*\s0s$/);
    });

    it('an empty list is a title and a header', () => {
      expect(renderTable([], NOW).split('\n')).to.have.length(2);
    });
  });

  describe(renderLines.name, () => {
    const lines = renderLines(SERVERS, NOW).split('\n');

    it('one key=value line per server, each with the time', () => {
      expect(lines).to.have.length(SERVERS.length);
      for (const l of lines) expect(l.startsWith(new Date(NOW).toISOString() + ' server=')).to.equal(true);
      expect(lines[0]).to.equal(`${new Date(NOW).toISOString()} server=127.0.0.1:4243 state=UP cpu=12.3% mem=56.8% load1=0.50 score=0.57 latency=1.2ms failures=0 in_state=1m15s`);
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

  describe(duration.name, () => {
    it('seconds, minutes, hours', () => {
      expect([0, 999, 59_999, 60_000, 3_599_000, 3_600_000, 90_061_000, -5].map(duration)).to.deep.equal(['0s', '0s', '59s', '1m00s', '59m59s', '1h00m', '25h01m', '0s']);
    });
  });
});
