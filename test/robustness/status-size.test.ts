/**
 * STATUS answers of any size (issue 13, item 4): two agents each reporting 256 metrics with
 * 128-character names, plus 200 more configured backends, make a STATUS far larger than one
 * 64 KiB frame; the load balancer pages it to the client's maxFrameBytes and `qhcp status`
 * (table and --json) reads every page.
 */
import { expect } from 'chai';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, startLoadBalancer, stopAll, runQhcp, waitUntil } from '../helpers/procs.ts';
import { RawPeer } from '../helpers/rawpeer.ts';
import { encodeFrame } from '../../core/protocol/codec.ts';
import { fileURLToPath } from 'node:url';

const WIDE = fileURLToPath(new URL('../fixtures/plugins/wide-metrics.ts', import.meta.url));

describe('Robustness: STATUS of any size', function () {
  this.timeout(180_000);
  let dir: string;
  before(() => (dir = mkdtempSync(join(tmpdir(), 'qhcp-status-size-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));
  afterEach(() => stopAll());

  it('2 agents with 256 metrics of 128-character names and 200 more backends: qhcp status reads every page', async () => {
    const cfg = join(dir, 'wide.json');
    writeFileSync(cfg, JSON.stringify({ defaults: false, plugins: [[WIDE, { count: 256, nameLength: 128 }]] }));
    const a = await startServer({ args: ['--config', cfg] });
    const b = await startServer({ args: ['--config', cfg] });
    // 200 more backends nobody answers on (discard port, distinct loopback addresses).
    const more = Array.from({ length: 200 }, (_, i) => `127.0.${1 + Math.floor(i / 250)}.${(i % 250) + 2}:9`);
    const lb = await startLoadBalancer([a.address, b.address, ...more], { interval: 1, reconnect: 60, args: ['--check-timeout', '0.9'] });
    const addr = `127.0.0.1:${lb.port}`;
    const full = await waitUntil(async () => {
      const r = await runQhcp(['status', '--address', addr, '--json'], { timeoutMs: 60_000 });
      if (r.code !== 0) throw new Error(r.stderr);
      const st = JSON.parse(r.stdout) as { servers: Array<{ address: string; state: string; metrics: Record<string, number> }> };
      const wide = st.servers.filter((s) => Object.keys(s.metrics).length === 256);
      return wide.length === 2 ? { st, bytes: r.stdout.length } : undefined;
    }, 90_000, 'both wide agents reporting 256 metrics in STATUS', 1000);
    expect(full.st.servers).to.have.length(202);
    expect(full.st.servers.map((s) => s.address)).to.include.members([a.address, b.address, ...more]);
    expect(full.bytes, 'the whole answer is several frames large').to.be.greaterThan(2 * 65536);

    const table = await runQhcp(['status', '--address', addr], { timeoutMs: 60_000 });
    expect(table.code, table.stderr).to.equal(0);
    expect(table.stdout.split('\n').filter((l) => l.startsWith('127.'))).to.have.length(202);

    // On the wire: pages within the client's limit, each naming the next offset.
    const p = await RawPeer.open({ port: lb.port });
    await p.send(encodeFrame({ type: 'HELLO', body: { versions: [1], role: 'query', node: 'pager', maxFrameBytes: 16384 } }));
    await p.waitFor('ACK');
    await p.send(encodeFrame({ type: 'STATUS', body: { seq: 1 } }));
    const first = await p.waitFor('STATUS_RESPONSE');
    if (first.type !== 'STATUS_RESPONSE') throw new Error('not STATUS_RESPONSE');
    expect(first.body.next).to.be.a('number');
    expect(first.body.total).to.equal(202);
    expect(Buffer.byteLength(JSON.stringify(first.body))).to.be.at.most(16384);
    expect(p.decodeErrors).to.deep.equal([]);
    await p.close();
  });
});
