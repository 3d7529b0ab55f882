/**
 * envoy-eds: Envoy is not installable here, so the file is checked against a JSON schema written
 * from Envoy's proto field names (test/fixtures/envoy/eds-discovery-response.schema.json: a
 * DiscoveryResponse holding one ClusterLoadAssignment, strict about unknown fields), and for
 * what Envoy needs of path-based EDS: the file is replaced by rename, never seen half-written.
 */
import { expect } from 'chai';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import type { BackendView, SyncUpdate } from '../../core/plugin/hooks.ts';
import EnvoyEdsPlugin, { type EnvoyEds } from '../../plugins/sync/envoy-eds.ts';
import { build, fakeCore, backend, type FakeCore } from './fake-core.ts';
import { removeDir, tempDir, waitUntil } from '../helpers/proxies.ts';

type Extra = Partial<{ verdict: string; agentAdmin: string; adminState: string }>;
const view = (address: string, over: Parameters<typeof backend>[1] & Extra = {}): BackendView => ({ ...backend(address, over), verdict: 'SERVING', agentAdmin: 'READY', adminState: 'READY', ...over }) as BackendView;
const update = (v: BackendView[]): SyncUpdate => ({ view: v, changed: v, removed: [], initial: false, at: Date.now() });
const schema = JSON.parse(readFileSync(new URL('../fixtures/envoy/eds-discovery-response.schema.json', import.meta.url), 'utf8')) as object;

interface Lb {
  endpoint: { address: { socket_address: { address: string; port_value: number } } };
  health_status: string;
  load_balancing_weight?: number;
}

describe('sync plugin envoy-eds (file checked against the proto JSON shape)', () => {
  let dir: string;
  let core: FakeCore;
  let plugin: EnvoyEds;
  const validate = new Ajv({ allErrors: true, strict: false }).compile(schema);
  const read = () => JSON.parse(readFileSync(plugin.options.file, 'utf8')) as { version_info: string; resources: Array<{ cluster_name: string; endpoints: Array<{ lb_endpoints: Lb[] }> }> };

  beforeEach(() => {
    dir = tempDir('qhcp-envoy-');
    core = fakeCore('loadbalancer');
    plugin = build(EnvoyEdsPlugin, { file: join(dir, 'eds.json'), cluster: 'app', portOffset: 1000, targets: { '10.0.0.9:4243': '[2001:db8::9]:8443' } });
    plugin.apply(core);
  });
  afterEach(async () => {
    await core.hooks.stop.promise(core);
    removeDir(dir);
  });

  it('writes a DiscoveryResponse with one ClusterLoadAssignment that matches the schema', async () => {
    core.hooks.sync.call(
      update([
        view('10.0.0.1:4243', { loadScore: 0.2 }),
        view('10.0.0.2:4243', { state: 'DEGRADED' as never, loadScore: 0 }),
        view('10.0.0.3:4243', { verdict: 'DEGRADED', loadScore: 0 }),
        view('10.0.0.4:4243', { agentAdmin: 'DRAIN' }),
        view('10.0.0.5:4243', { adminState: 'MAINT' }),
        view('10.0.0.6:4243', { state: 'DOWN' }),
        view('10.0.0.7:4243', { state: 'UNKNOWN' }),
        view('10.0.0.9:4243', { loadScore: 0.99 }),
      ]),
    );
    expect(await plugin.settled(5000)).to.equal(true);
    const doc = read();
    expect(validate(doc), JSON.stringify(validate.errors)).to.equal(true);
    expect(doc.resources).to.have.length(1);
    expect(doc.resources[0]!.cluster_name).to.equal('app');
    const eps = doc.resources[0]!.endpoints[0]!.lb_endpoints;
    expect(eps.map((e) => e.health_status)).to.deep.equal(['HEALTHY', 'DEGRADED', 'DEGRADED', 'DRAINING', 'DRAINING', 'UNHEALTHY', 'UNKNOWN', 'HEALTHY']);
    expect(eps.map((e) => e.load_balancing_weight)).to.deep.equal([80, 100, 100, undefined, undefined, undefined, undefined, 1]);
    expect(eps[0]!.endpoint.address.socket_address).to.deep.equal({ address: '10.0.0.1', port_value: 5243 });
    expect(eps[7]!.endpoint.address.socket_address).to.deep.equal({ address: '2001:db8::9', port_value: 8443 });
  });

  it('the schema is strict: it refuses what Envoy would refuse (so the check above can fail)', () => {
    const ok = { resources: [{ '@type': 'type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment', cluster_name: 'a', endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: '1.2.3.4', port_value: 80 } } }, health_status: 'HEALTHY', load_balancing_weight: 1 }] }] }] };
    expect(validate(ok)).to.equal(true);
    const bad = (mutate: (o: typeof ok) => void) => {
      const o = JSON.parse(JSON.stringify(ok)) as typeof ok;
      mutate(o);
      return validate(o);
    };
    expect(bad((o) => ((o.resources[0]!.endpoints[0]!.lb_endpoints[0] as Record<string, unknown>).health_status = 'SERVING'))).to.equal(false);
    expect(bad((o) => ((o.resources[0]!.endpoints[0]!.lb_endpoints[0] as Record<string, unknown>).load_balancing_weight = 0))).to.equal(false);
    expect(bad((o) => ((o.resources[0]!.endpoints[0]!.lb_endpoints[0] as Record<string, unknown>).weight = 3))).to.equal(false);
    expect(bad((o) => ((o.resources[0]!.endpoints[0]!.lb_endpoints[0]!.endpoint.address.socket_address as Record<string, unknown>).port = 80))).to.equal(false);
    expect(bad((o) => ((o.resources[0] as Record<string, unknown>)['@type'] = 'type.googleapis.com/envoy.api.v2.ClusterLoadAssignment'))).to.equal(false);
    expect(bad((o) => ((o.resources[0] as Record<string, unknown>).clusterName = 'x'))).to.equal(false);
  });

  it('rewrites only on change, with a new version_info, always by rename (never half-written)', async () => {
    const A = ['10.0.0.1:4243', '10.0.0.2:4243'];
    core.hooks.sync.call(update(A.map((a) => view(a, { loadScore: 0 }))));
    expect(await plugin.settled(5000)).to.equal(true);
    const v1 = read().version_info;
    // Same content: no write.
    core.hooks.sync.call(update(A.map((a) => view(a, { loadScore: 0 }))));
    expect(await plugin.settled(5000)).to.equal(true);
    expect(plugin.writes).to.equal(1);
    // 200 changes while a reader reads the file as fast as it can: every read parses and validates.
    let reads = 0;
    let stop = false;
    const reader = (async () => {
      while (!stop && reads < 100_000) {
        const doc = read();
        expect(validate(doc)).to.equal(true);
        reads++;
        await new Promise((r) => setImmediate(r));
      }
    })();
    for (let i = 1; i <= 200; i++) {
      core.hooks.sync.call(update([view(A[0]!, { loadScore: (i % 90) / 100 }), view(A[1]!, { state: i % 2 ? 'DOWN' : 'UP' })]));
      await new Promise((r) => setImmediate(r));
    }
    expect(await plugin.settled(5000)).to.equal(true);
    stop = true;
    await reader;
    expect(reads).to.be.greaterThan(10);
    expect(plugin.writes).to.be.greaterThan(2);
    expect(read().version_info).to.not.equal(v1);
    // No temporary files left behind.
    await waitUntil(() => readdirSync(dir).length === 1, 2000, 'only eds.json in the folder');
  });
});
