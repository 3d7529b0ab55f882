/**
 * The qhcp side of the TCP benchmark, in its own process: two `tcp-proxy` plugin instances
 * (hello and source backends) on a minimal load-balancer core with the `round-robin` balancer,
 * fed one sync update with every backend UP. This measures the proxy's data path alone; the
 * health-check loop's own cost is measured by the other benchmark sections.
 * argv[2]: JSON { hello: number[], source: number[] }. Prints one JSON line with the two ports.
 */
import { resolve } from 'node:path';
import { createHooks, guardHooks, type BackendView, type CoreLike } from '../../core/plugin/hooks.ts';
import { createLogger } from '../../core/util/log.ts';
import { buildConfig } from '../../core/config/config.ts';
import TcpProxyPlugin from '../../plugins/proxy/tcp.ts';
import RoundRobinPlugin from '../../plugins/balancer/round-robin.ts';
import { build } from '../../core/testing/index.ts';

const ports = JSON.parse(process.argv[2]!) as { hello: number[]; source: number[] };

async function proxy(targets: number[]): Promise<number> {
  const logger = createLogger({ level: 'warn', json: true, write: (l) => process.stderr.write(`${l}\n`) });
  const hooks = createHooks();
  guardHooks(hooks, logger, 2000, new Map());
  const core: CoreLike = { role: 'loadbalancer', hooks, logger, node: 'bench', config: buildConfig({}, undefined, {}).config, configDir: process.cwd(), resolvePath: (p) => resolve(p) };
  const view: BackendView[] = targets.map((_, i) => ({ address: `127.0.0.1:${20000 + i}`, state: 'UP', metrics: {}, reportedAt: Date.now(), weight: 1, latencyMs: null, verdict: 'SERVING', agentAdmin: 'READY', adminState: 'READY', reason: null }) as unknown as BackendView);
  const p = build(TcpProxyPlugin, { port: 0, maxConnections: 100_000, targets: Object.fromEntries(view.map((b, i) => [b.address, `127.0.0.1:${targets[i]}`])) });
  p.apply(core);
  build(RoundRobinPlugin).apply(core);
  await hooks.start.promise(core);
  hooks.sync.call({ view, changed: view, removed: [], initial: true, at: Date.now() });
  return p.port;
}

process.stdout.write(`${JSON.stringify({ hello: await proxy(ports.hello), source: await proxy(ports.source) })}\n`);
