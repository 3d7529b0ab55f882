/**
 * Issue 11's walk-through with a real service: a `qhcp server` fronting a real HTTP server started
 * by this test (built-in `http` check) plus a maintenance file (`file` check), and a
 * `qhcp loadbalancer` checking every 30 s, so every change below reaches it as a pushed report.
 * The service answers 200 -> UP; answers 503 -> DOWN with the reason; stopped (agent still
 * running) -> DOWN with the connect error; slower than the check's timeout -> DOWN "timed out";
 * back -> UP; the maintenance file appears -> MAINT, removed -> UP.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { startServer, startLoadBalancer, stopAll, waitForState, type QhcpProcess } from '../helpers/procs.ts';

describe('an agent fronting a real HTTP service, seen by a real load balancer', function () {
  this.timeout(240_000);
  let dir: string;
  let http: Server;
  let httpPort: number;
  /** What the HTTP service does next: answer this status, or wait this long first. */
  const behave = { status: 200, delayMs: 0 };
  let agent: { proc: QhcpProcess; address: string };
  let lb: { proc: QhcpProcess; port: number };

  const listen = (port = 0) =>
    new Promise<void>((resolve, reject) => {
      http = createServer((_req, res) => {
        const t = setTimeout(() => res.writeHead(behave.status).end(behave.status === 200 ? 'ok' : 'unavailable'), behave.delayMs);
        res.on('close', () => clearTimeout(t));
      });
      http.once('error', reject);
      http.listen(port, '127.0.0.1', () => {
        httpPort = (http.address() as AddressInfo).port;
        resolve();
      });
    });
  const close = () =>
    new Promise<void>((resolve) => {
      http.closeAllConnections();
      http.close(() => resolve());
    });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-http-svc-'));
    await listen();
    writeFileSync(
      join(dir, 'agent.json'),
      JSON.stringify({
        services: {
          web: [
            { type: 'http', url: `http://127.0.0.1:${httpPort}/healthz`, interval: 0.3, timeout: 0.5, rise: 1, fall: 1 },
            { type: 'file', path: './maintenance', interval: 0.3, timeout: 1, rise: 1, fall: 1 },
          ],
        },
        controlSocket: './ctl.sock',
      }),
    );
    agent = await startServer({ cwd: dir, args: ['-config', join(dir, 'agent.json')] });
    lb = await startLoadBalancer([`${agent.address}/web`], { cwd: dir, interval: 30, fail: 3 });
    await waitForState(lb.port, `${agent.address}/web`, 'UP', 60_000);
  });

  after(async () => {
    await stopAll();
    await close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  });

  it('503 -> DOWN with the reason; 200 again -> UP', async () => {
    const web = `${agent.address}/web`;
    behave.status = 503;
    const down = await waitForState(lb.port, web, 'DOWN', 30_000);
    expect(down.verdict).to.equal('NOT_SERVING');
    expect(down.reason).to.match(/HTTP 503/);
    behave.status = 200;
    await waitForState(lb.port, web, 'UP', 30_000);
  });

  it('the service stopped while the agent runs -> DOWN with the connect error; restarted -> UP', async () => {
    const web = `${agent.address}/web`;
    const port = httpPort;
    await close();
    const down = await waitForState(lb.port, web, 'DOWN', 30_000);
    expect(down.reason).to.match(/ECONNREFUSED/);
    await listen(port);
    await waitForState(lb.port, web, 'UP', 30_000);
  });

  it('slower than the check timeout -> DOWN "timed out"; fast again -> UP', async () => {
    const web = `${agent.address}/web`;
    behave.delayMs = 2000;
    const down = await waitForState(lb.port, web, 'DOWN', 30_000);
    expect(down.reason).to.match(/timed out/);
    behave.delayMs = 0;
    await waitForState(lb.port, web, 'UP', 30_000);
  });

  it('the maintenance file -> MAINT at the load balancer; removed -> UP', async () => {
    const web = `${agent.address}/web`;
    writeFileSync(join(dir, 'maintenance'), 'kernel upgrade\n');
    const m = await waitForState(lb.port, web, 'MAINT', 30_000);
    expect(m.agentAdmin).to.equal('MAINT');
    unlinkSync(join(dir, 'maintenance'));
    await waitForState(lb.port, web, 'UP', 30_000);
  });
});
