/**
 * The example custom metric plugin end to end, with real processes on loopback: a `qhcp
 * server` started with `--config` naming a qhcp.config.ts that enables
 * docs/examples/queue-length.ts (beside system-metrics), a `qhcp loadbalancer` checking it, and
 * `qhcp status --json` showing the queue length arrive, then follow the queue file as it changes.
 */
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { startServer, startLoadBalancer, runQhcp, stopAll, waitUntil, type QhcpProcess } from '../helpers/procs.ts';
import type { ServerStatus } from '../../core/protocol/messages.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

describe('custom metric plugin (docs/examples/queue-length.ts) through real processes', function () {
  this.timeout(90_000);
  let dir: string;
  let queue: string;
  let server: { proc: QhcpProcess; address: string };
  let lb: { proc: QhcpProcess; port: number };

  /** The server's row in `qhcp status --json`. */
  async function status(): Promise<ServerStatus | undefined> {
    const r = await runQhcp(['status', '--address', `127.0.0.1:${lb.port}`, '--json'], { cwd: dir, timeoutMs: 20_000 });
    if (r.code !== 0) throw new Error(`qhcp status exited ${r.code}: ${r.stderr}`);
    return (JSON.parse(r.stdout) as { servers: ServerStatus[] }).servers.find((s) => s.address === server.address);
  }

  const queueLengthBecomes = (n: number) =>
    waitUntil(
      async () => {
        const s = await status();
        return s?.state === 'UP' && s.metrics.queueLength === n ? s : undefined;
      },
      30_000,
      `queueLength ${n} in qhcp status --json`,
      250,
    );

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-custom-plugin-'));
    queue = join(dir, 'jobs.txt');
    writeFileSync(queue, 'job-1\njob-2\n\njob-3\n'); // blank lines are not jobs
    const config = join(dir, 'agent.config.ts');
    writeFileSync(
      config,
      [
        `import { defineConfig } from ${JSON.stringify(join(ROOT, 'core/config/config.ts'))};`,
        'export default defineConfig({',
        '  sampleInterval: 0.1,',
        '  plugins: [',
        "    'system-metrics',",
        `    [${JSON.stringify(join(ROOT, 'docs/examples/queue-length.ts'))}, { file: ${JSON.stringify(queue)}, interval: 0.2 }],`,
        '  ],',
        '});',
        '',
      ].join('\n'),
    );
    // The working directory has no config file of its own: only --config brings the plugin in.
    server = await startServer({ cwd: dir, args: ['--config', config] });
    lb = await startLoadBalancer([server.address], { cwd: dir, interval: 0.3, reconnect: 0.5 });
  });

  after(async () => {
    await stopAll();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('reports the queue length, beside the system metrics, at the load balancer', async () => {
    const s = await queueLengthBecomes(3);
    expect(s.metrics).to.have.property('cpu').that.is.a('number');
    expect(server.proc.output).to.match(/server listening .*metrics=\d+/);
  });

  it('follows the queue file as jobs arrive and drain', async () => {
    appendFileSync(queue, 'job-4\njob-5\n');
    await queueLengthBecomes(5);
    writeFileSync(queue, '');
    await queueLengthBecomes(0);
    expect(server.proc.running).to.equal(true);
    expect(server.proc.output).not.to.match(/plugin queue-length in hook/);
  });
});
