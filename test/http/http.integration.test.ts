/**
 * The HTTP listeners with real processes on loopback: three agents (one with its own listener)
 * and a load balancer with `--http 127.0.0.1:0`. /metrics passes promtool and is scraped by a
 * real Prometheus; an agent killed shows as DOWN in the exposition; logs are JSON lines when
 * stderr is not a terminal; `qhcp --version` does not load the HTTP stack.
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { pickMany, startServer, startLoadBalancer, stopAll, waitUntil, runQhcp, ROOT, type QhcpProcess } from '../helpers/procs.ts';
import { promtool } from './fake-lb.ts';
import { httpUrl } from './helpers.ts';


async function get(url: string): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`${url}: ${res.status}`);
  return res.text();
}

function value(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

async function freeTcpPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function has(cmd: string): boolean {
  try {
    execFileSync(cmd, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe('HTTP listeners (real processes)', function () {
  this.timeout(120_000);
  let servers: Array<{ proc: QhcpProcess; address: string }>;
  let lb: { proc: QhcpProcess; port: number };
  let url: string;
  let agentUrl: string;
  let prom: ChildProcess | undefined;
  let dir: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-http-int-'));
    servers = [await startServer({ args: ['--http', '127.0.0.1:0'] }), await startServer(), await startServer()];
    agentUrl = await httpUrl(servers[0]!.proc);
    lb = await startLoadBalancer(
      servers.map((s) => s.address),
      { interval: 0.5, fail: 2, args: ['--http', '127.0.0.1:0', '--status', 'none'], env: { QHCP_LOG_FORMAT: undefined } },
    );
    url = await httpUrl(lb.proc);
    await waitUntil(async () => value(await get(`${url}metrics`), 'qhcp_backends{state="UP"}') === 3, 30_000, 'three backends UP in /metrics');
  });

  after(async () => {
    if (prom && prom.exitCode === null) {
      prom.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 200));
      if (prom.exitCode === null) prom.kill('SIGKILL');
    }
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  });

  it("the load balancer's /metrics passes promtool and names every backend", async () => {
    const text = await get(`${url}metrics`);
    promtool(text);
    for (const s of servers) expect(text).to.include(`qhcp_backend_status{backend="${s.address}",service="",name=`);
    expect(text).to.match(/qhcp_backend_checks_total\{[^}]*result="ok"\} [1-9]/);
    expect(text).to.match(/qhcp_backend_metric\{[^}]*metric="cpu"\} /);
  });

  it('counts real PICKs by the balancer that chose them', async () => {
    const picked = () => value(text, 'qhcp_picks_total{strategy="round-robin",result="picked"}') ?? 0;
    let text = await get(`${url}metrics`);
    const before = picked();
    const answers = await pickMany(lb.port, 4);
    expect(answers.every((a) => a.server !== null && a.balancer === 'round-robin'), JSON.stringify(answers)).to.equal(true);
    text = await get(`${url}metrics`);
    expect(picked() - before).to.equal(4);
    // The QUIC driver's counters, per socket: the checks moved datagrams both ways, the PICKs came over the query port.
    const transport = (socket: string, event: string) => value(text, `qhcp_transport_events_total{socket="${socket}",event="${event}"}`);
    for (const socket of ['check', 'query']) for (const event of ['datagrams_in', 'datagrams_out']) expect(transport(socket, event), `${socket} ${event}`).to.be.greaterThan(0);
    expect(transport('check', 'nudges'), 'nudges are counted (none on a healthy path)').to.be.a('number');
    expect(transport('check', 'bogus')).to.equal(undefined);
  });

  it("the agent's own listener exposes its sessions, metrics and sampler", async () => {
    const text = await get(`${agentUrl}metrics`);
    promtool(text);
    expect(value(text, 'qhcp_agent_sessions')).to.equal(1);
    expect(value(text, 'qhcp_agent_health_requests_total')).to.be.greaterThan(0);
    expect(text).to.match(/qhcp_agent_metric\{metric="cpu"\} /);
    expect(text).to.match(/qhcp_agent_sampler_reads_total\{plugin="system-metrics",source="cpu"\} [1-9]/);
    const status = JSON.parse(await get(`${agentUrl}api/status`));
    expect(status).to.include({ role: 'agent', sessions: 1 });
    expect(status.metrics).to.have.property('cpu');
  });

  it('logs JSON lines (time, level, msg) when stderr is not a terminal', () => {
    const line = lb.proc.stderr.split('\n').find((l) => l.includes('load balancer started'));
    expect(line, lb.proc.stderr.slice(0, 500)).to.be.a('string');
    expect(JSON.parse(line!)).to.include({ level: 'info', msg: 'load balancer started' });
  });

  it('is scraped by a real Prometheus', async function () {
    if (!has('prometheus')) {
      if (process.env.CI) throw new Error("prometheus is missing: .ci/run installs Debian's prometheus package");
      this.skip();
    }
    const promPort = await freeTcpPort();
    const target = new URL(url).host;
    writeFileSync(join(dir, 'prometheus.yml'), `global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: qhcp\n    static_configs:\n      - targets: ['${target}']\n`);
    prom = spawn('prometheus', [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let promLog = '';
    prom.stderr!.setEncoding('utf8').on('data', (d: string) => (promLog += d.slice(0, 10_000)));
    const query = async (q: string) => {
      const r = await fetch(`http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(q)}`, { signal: AbortSignal.timeout(3000) });
      return (await r.json()) as { data?: { result?: Array<{ metric: Record<string, string>; value: [number, string] }> } };
    };
    const up = await waitUntil(
      async () => {
        const r = await query('qhcp_backends{state="UP"}');
        return r.data?.result?.[0];
      },
      45_000,
      `Prometheus to scrape qhcp (log: ${promLog.slice(-500)})`,
      500,
    );
    expect(up.value[1]).to.equal('3');
    const health = await query('up{job="qhcp"}');
    expect(health.data?.result?.[0]?.value[1]).to.equal('1');
  });

  it('an agent killed shows as DOWN in /metrics, the others stay UP', async () => {
    const victim = servers[2]!;
    victim.proc.signal('SIGKILL');
    const text = await waitUntil(
      async () => {
        const t = await get(`${url}metrics`);
        return new RegExp(`qhcp_backend_status\\{backend="${victim.address.replace(/\./g, '\\.')}"[^}]*state="DOWN"\\} 1`).test(t) ? t : undefined;
      },
      30_000,
      'the killed agent DOWN in /metrics',
      250,
    );
    expect(value(text, 'qhcp_backends{state="UP"}')).to.equal(2);
    expect(text).to.match(new RegExp(`qhcp_backend_transitions_total\\{backend="${victim.address.replace(/\./g, '\\.')}"[^}]*from="UP",to="DOWN"\\} 1`));
  });

  it('`qhcp --version` does not load the HTTP stack', async () => {
    // The CLI's modules import core/http only dynamically, and only the part without fastify.
    const cli = readFileSync(join(ROOT, 'core/cli/cli.ts'), 'utf8');
    expect(cli).to.not.match(/^import .*(fastify|prom-client|\.\.\/http\/)/m);
    const common = readFileSync(join(ROOT, 'core/http/common.ts'), 'utf8');
    expect(common).to.not.match(/from '(fastify|prom-client)'|from '\.\/(server|loadbalancer|metrics|agent)\.ts'/);
    const r = await runQhcp(['--version'], { env: { NODE_DEBUG: 'module' } });
    expect(r.code).to.equal(0);
    expect(r.stdout + r.stderr).to.not.match(/node_modules\/(fastify|prom-client)\//);
  });
});

describe('admin API on a real load balancer (qhcp admin, state file, restart)', function () {
  this.timeout(180_000);
  let dir: string;
  const token = 'integration-token-0123456789';

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-admin-int-'));
    writeFileSync(join(dir, 'token'), `${token}\n`);
  });
  after(async () => {
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  });

  it('drains by hand, adds a backend without touching the others, and keeps both across a restart', async () => {
    const [a, b, c] = [await startServer(), await startServer(), await startServer()];
    const lbArgs = ['--http', '127.0.0.1:0', '--http-token-file', join(dir, 'token'), '--state-file', join(dir, 'state.json'), '--status', 'none'];
    let lb = await startLoadBalancer([a.address, b.address], { interval: 0.5, args: lbArgs });
    let url = await httpUrl(lb.proc);
    const backends = async () => (JSON.parse(await get(`${url}api/backends`)) as { backends: Array<{ address: string; state: string; adminState: string; checks: number }> }).backends;
    const stateOf = async (addr: string) => (await backends()).find((x) => x.address === addr)?.state;
    await waitUntil(async () => (await stateOf(a.address)) === 'UP' && (await stateOf(b.address)) === 'UP', 30_000, 'a and b UP');

    const denied = await runQhcp(['admin', 'drain', a.address, '--url', url]);
    expect(denied.code).to.equal(1);
    expect(denied.stderr).to.match(/401 UNAUTHORIZED/);

    const drain = await runQhcp(['admin', 'drain', a.address, '--url', url, '--token-file', join(dir, 'token')]);
    expect(drain.code, drain.stderr).to.equal(0);
    expect(drain.stdout).to.match(new RegExp(`${a.address}: admin DRAIN`));
    await waitUntil(async () => (await stateOf(a.address)) === 'DRAINING', 10_000, 'a DRAINING');

    const bBefore = (await backends()).find((x) => x.address === b.address)!;
    const add = await runQhcp(['admin', 'add', c.address, '--url', url, '--token-file', join(dir, 'token')]);
    expect(add.code, add.stderr).to.equal(0);
    await waitUntil(async () => (await stateOf(c.address)) === 'UP', 30_000, 'c UP after add');
    const bAfter = (await backends()).find((x) => x.address === b.address)!;
    // b was not restarted or reset: still UP, its check count only grew.
    expect(bAfter.state).to.equal('UP');
    expect(bAfter.checks).to.be.greaterThan(bBefore.checks);

    const doc = JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8'));
    expect(doc.added).to.deep.equal([c.address]);
    expect(doc.backends[a.address]).to.deep.equal({ admin: 'DRAIN' });

    // Restart with the same flags: the state file brings back c and a's DRAIN.
    await lb.proc.stop();
    lb = await startLoadBalancer([a.address, b.address], { interval: 0.5, args: lbArgs });
    url = await httpUrl(lb.proc);
    await waitUntil(async () => (await stateOf(c.address)) === 'UP' && (await stateOf(b.address)) === 'UP', 30_000, 'b and c UP after restart');
    const after = await backends();
    expect(after.map((x) => x.address)).to.deep.equal([a.address, b.address, c.address]);
    expect(after.find((x) => x.address === a.address)).to.include({ adminState: 'DRAIN' });
    expect(after.find((x) => x.address === a.address)!.state).to.not.equal('UP');

    const list = await runQhcp(['admin', 'list', '--url', url, '--json']);
    expect(list.code, list.stderr).to.equal(0);
    expect(JSON.parse(list.stdout).backends).to.have.length(3);
  });
});
