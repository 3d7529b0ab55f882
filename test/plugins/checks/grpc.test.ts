import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import grpcKind, { loadHealth } from '../../../plugins/check/grpc.ts';
import { ConfigError } from '../../../core/errors.ts';
import { make, runFor, testContext, validated } from './helpers.ts';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

type Status = 'UNKNOWN' | 'SERVING' | 'NOT_SERVING' | 'SERVICE_UNKNOWN';

/**
 * A real grpc-js server implementing grpc.health.v1.Health/Check from a status table, as a
 * service would: an unknown service name is NOT_FOUND (the protocol's rule for Check); a name
 * mapped to 'hang' never answers.
 */
async function healthServer(statuses: Map<string, Status | 'hang'>, port = 0, withHealth = true): Promise<{ server: grpc.Server; port: number }> {
  const { Health } = await loadHealth();
  const server = new grpc.Server();
  if (withHealth) {
    const service = (Health as unknown as { service: grpc.ServiceDefinition }).service;
    server.addService(service, {
      Check(call: grpc.ServerUnaryCall<{ service: string }, { status: Status }>, cb: grpc.sendUnaryData<{ status: Status }>) {
        const s = statuses.get(call.request.service);
        if (s === 'hang') return;
        if (s === undefined) return cb({ code: grpc.status.NOT_FOUND, details: `unknown service ${call.request.service}` });
        cb(null, { status: s });
      },
      Watch(call: grpc.ServerWritableStream<unknown, unknown>) {
        call.end();
      },
    });
  }
  const bound = await new Promise<number>((resolve, reject) => server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  return { server, port: bound };
}

describe('check kind: grpc', () => {
  const ctx = testContext(process.cwd());
  const statuses = new Map<string, Status | 'hang'>([
    ['', 'SERVING'],
    ['web', 'NOT_SERVING'],
    ['api', 'SERVICE_UNKNOWN'],
    ['stuck', 'hang'],
  ]);
  let server: grpc.Server;
  let port: number;
  const checks: Array<{ close?(): void | Promise<void> }> = [];
  const check = (options: Record<string, unknown>) => {
    const c = make(grpcKind, options, ctx);
    checks.push(c);
    return c;
  };

  before(async () => {
    ({ server, port } = await healthServer(statuses));
  });
  after(async () => {
    for (const c of checks) await c.close?.();
    server.forceShutdown();
  });

  it('fills its defaults from the schema (the whole server)', () => {
    expect(validated(grpcKind, { address: '127.0.0.1:50051' })).to.deep.equal({ address: '127.0.0.1:50051', service: '' });
  });

  it('passes on SERVING for the whole server', async () => {
    expect(await runFor(check({ address: `127.0.0.1:${port}` }), 5000)).to.deep.equal({ status: 'passing', output: 'SERVING' });
  });

  it('is critical with the status for NOT_SERVING and SERVICE_UNKNOWN, and follows a change on the same channel', async () => {
    const web = check({ address: `127.0.0.1:${port}`, service: 'web' });
    expect(await runFor(web, 5000)).to.deep.equal({ status: 'critical', output: 'NOT_SERVING' });
    expect(await runFor(check({ address: `127.0.0.1:${port}`, service: 'api' }), 5000)).to.deep.equal({ status: 'critical', output: 'SERVICE_UNKNOWN' });
    statuses.set('web', 'SERVING');
    try {
      expect(await runFor(web, 5000)).to.deep.equal({ status: 'passing', output: 'SERVING' });
      statuses.set('web', 'UNKNOWN');
      expect(await runFor(web, 5000)).to.deep.equal({ status: 'critical', output: 'UNKNOWN' });
    } finally {
      statuses.set('web', 'NOT_SERVING');
    }
  });

  it('is critical NOT_FOUND for a service the server does not know', async () => {
    expect(await runFor(check({ address: `127.0.0.1:${port}`, service: 'nope' }), 5000)).to.deep.equal({ status: 'critical', output: 'NOT_FOUND: unknown service nope' });
  });

  it('is critical "timed out" when the server does not answer in time', async () => {
    const t0 = Date.now();
    const out = await runFor(check({ address: `127.0.0.1:${port}`, service: 'stuck' }), 400);
    expect(out.status).to.equal('critical');
    expect(out.output).to.match(/^timed out after \d+ ms$/);
    expect(Date.now() - t0).to.be.below(20_000); // returned at the abort (the server never answers)
  });

  it('is critical UNIMPLEMENTED against a server without the health service', async () => {
    const bare = await healthServer(new Map(), 0, false);
    try {
      const out = await runFor(check({ address: `127.0.0.1:${bare.port}` }), 5000);
      expect(out.status).to.equal('critical');
      expect(out.output).to.match(/^UNIMPLEMENTED: /);
    } finally {
      bare.server.forceShutdown();
    }
  });

  it('is critical UNAVAILABLE when the server stops, and passes at once when it is back', async () => {
    const own = await healthServer(new Map([['', 'SERVING']]));
    const c = check({ address: `127.0.0.1:${own.port}` });
    expect((await runFor(c, 5000)).status).to.equal('passing');
    own.server.forceShutdown();
    const down = await runFor(c, 5000);
    expect(down.status).to.equal('critical');
    expect(down.output).to.match(/^UNAVAILABLE: /);
    const back = await healthServer(new Map([['', 'SERVING']]), own.port);
    try {
      expect(await runFor(c, 5000)).to.deep.equal({ status: 'passing', output: 'SERVING' });
    } finally {
      back.server.forceShutdown();
    }
  });

  it('does not load @grpc/grpc-js until a grpc check first runs', async function () {
    this.timeout(30_000);
    // A fresh Node: import the kind and create a check (nothing loaded), then run it once (loaded).
    const script = `
      import { createRequire } from 'node:module';
      const require = createRequire(import.meta.url);
      const loaded = () => Object.keys(require.cache).some((k) => k.includes('@grpc/grpc-js'));
      const kind = (await import('./plugins/check/grpc.ts')).default;
      const c = kind.create({ address: '127.0.0.1:1' }, { logger: console, resolvePath: (p) => p });
      const before = loaded();
      await c.run(AbortSignal.timeout(2000));
      console.log(JSON.stringify({ before, after: loaded() }));
      c.close();
      process.exit(0);`;
    const out = await new Promise<string>((resolve, reject) =>
      execFile(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, timeout: 25_000 }, (e, stdout, stderr) => (e ? reject(new Error(`${e.message}\n${stderr}`)) : resolve(stdout))),
    );
    expect(JSON.parse(out.trim().split('\n').at(-1)!)).to.deep.equal({ before: false, after: true });
  });

  describe('options that cannot work are config errors at creation', () => {
    const bad: Array<[string, Record<string, unknown>, RegExp]> = [
      ['an address without a port', { address: '127.0.0.1' }, /is not host:port/],
      ['a port out of range', { address: '127.0.0.1:70000' }, /port 70000 .* out of range/],
      ['a missing CA file', { address: '127.0.0.1:50051', tls: { ca: 'no-such-ca.pem' } }, /tls\.ca .* cannot be read/],
      ['a client cert without its key', { address: '127.0.0.1:50051', tls: { cert: 'c.pem' } }, /tls\.cert and tls\.key go together/],
    ];
    for (const [what, options, message] of bad) {
      it(what, () => {
        expect(() => grpcKind.create(options as never, ctx)).to.throw(ConfigError, message);
      });
    }
    it('accepts grpc-js target URIs and IPv6', () => {
      for (const address of ['dns:///localhost:50051', 'unix:/run/app.sock', '[::1]:50051', 'localhost:50051']) grpcKind.create({ address, service: '' }, ctx).close?.();
    });
  });
});
