/**
 * Agent farm: one process hosting many qhcp agents (core/roles/agent.ts AgentServer) on loopback
 * ports, driven by its parent over the IPC channel (bench/lib/children.ts). It lets one
 * machine offer a load balancer 1000 real QHCP servers without 1000 Node processes.
 *
 * The agents share one certificate (written once) and report the same four metrics the
 * system-metrics plugin does, from a cheap in-memory source, so the farm's own CPU stays
 * small and the messages on the wire have the real size.
 *
 * SIGTERM stops every agent gracefully (DRAIN to each load balancer), then exits.
 */
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentServer } from '../core/roles/agent.ts';
import { buildConfig } from '../core/config/config.ts';
import { selfSigned } from '../core/transport/tls.ts';
import { createLogger } from '../core/util/log.ts';
import type { CoreLike } from '../core/plugin/hooks.ts';
import type { QhcpPlugin } from '../core/plugin/loader.ts';
import type { FarmRequest, FarmReply } from './lib/children.ts';

const PLUGIN_NAME = 'bench-metrics';

/** The system-metrics names and value shapes, without reading /proc for each of 1000 agents. */
class FarmMetricsPlugin implements QhcpPlugin {
  readonly name = PLUGIN_NAME;
  readonly family = 'metrics' as const;
  apply(core: CoreLike): void {
    core.hooks.metricDefinitions.tap(PLUGIN_NAME, (defs) => [
      ...defs,
      ...['cpu', 'memory', 'load1', 'loadScore'].map((name) => ({ name, unit: '', help: 'bench', plugin: PLUGIN_NAME })),
    ]);
    core.hooks.collect.tap(PLUGIN_NAME, (report) => {
      report.set('cpu', Math.round(Math.random() * 1000) / 10);
      report.set('memory', 42.5);
      report.set('load1', 0.75);
      report.set('loadScore', Math.round(Math.random() * 1000) / 1000);
    });
  }
}

const agents: AgentServer[] = [];
const logger = createLogger({ level: 'error', name: 'farm' });
const dir = mkdtempSync(join(tmpdir(), 'qhcp-farm-'));

async function start(req: Extract<FarmRequest, { cmd: 'start' }>): Promise<number[]> {
  const tls = await selfSigned(['127.0.0.1']);
  const certFile = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  writeFileSync(certFile, tls.cert);
  writeFileSync(keyFile, tls.key, { mode: 0o600 });
  const ports: number[] = [];
  for (let i = 0; i < req.count; i++) {
    const { config } = buildConfig(undefined, undefined, {
      serverIp: '127.0.0.1',
      serverPort: req.ports?.[i] ?? 0,
      certFile,
      keyFile,
      defaults: false,
      sampleInterval: req.sampleInterval ?? 5,
      drainGrace: req.drainGrace ?? 1,
      idleTimeout: req.idleTimeout ?? 30,
      node: `farm-${i}`,
    });
    const a = new AgentServer(config, logger);
    await a.loadPlugins([new FarmMetricsPlugin()]);
    await a.start();
    agents.push(a);
    ports.push(a.port);
  }
  return ports;
}

async function stopAll(): Promise<void> {
  await Promise.all(agents.map((a) => a.stop().catch(() => {})));
  rmSync(dir, { recursive: true, force: true });
}

function reply(r: FarmReply): void {
  process.send?.(r);
}

process.on('message', (m: FarmRequest) => {
  void (async () => {
    try {
      if (m.cmd === 'start') reply({ id: m.id, ok: true, ports: await start(m) });
      else if (m.cmd === 'stats') {
        const s = { sessions: 0, healthRequests: 0, accepted: 0 };
        for (const a of agents) {
          s.sessions += a.sessions.size;
          s.healthRequests += a.stats.healthRequests;
          s.accepted += a.stats.accepted;
        }
        reply({ id: m.id, ok: true, stats: s });
      } else if (m.cmd === 'stop') {
        await stopAll();
        reply({ id: m.id, ok: true });
        process.exit(0);
      }
    } catch (e) {
      reply({ id: m.id, ok: false, error: String(e) });
    }
  })();
});

let stopping = false;
process.on('SIGTERM', () => {
  if (stopping) return;
  stopping = true;
  void stopAll().finally(() => process.exit(0));
});
// The parent went away: do not linger.
process.on('disconnect', () => void stopAll().finally(() => process.exit(0)));
