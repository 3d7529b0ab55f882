/**
 * The package as a user gets it: `npm pack` (which builds dist/ through prepack), then
 * `npm install -g <tarball>` into a fresh temporary prefix and `npm install <tarball>` as a
 * dependency of a fresh consumer project. Runs the installed binary from PATH (--version, the
 * seed's server and load balancer commands as real processes on loopback, status and pick),
 * `node dist/core/cli/main.js`, and a consumer that imports `qhcp`, `qhcp/client` and
 * `qhcp/testing`, typechecks docs/examples against the installed types and runs them (through
 * qhcp/testing and through a real `qhcp server` loading a qhcp.config.ts that imports them).
 *
 * Slow (a build and two installs, from the npm cache when it has the dependencies); every
 * process is bounded and stopped by PID.
 */
import { execFile, spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { ROOT, freePort, waitUntil, QhcpProcess, stopAll } from './helpers/procs.ts';
import { makeCerts, type TestCerts } from './helpers/certs.ts';
import { alive, expectAllGone, startDemo, takenPorts } from './helpers/demo.ts';

const run = promisify(execFile);
const NPM_OPTS = ['--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'];

describe('the npm package, installed from its tarball', function () {
  this.timeout(600_000);
  let work: string;
  let tarball: string;
  let prefix: string;
  let bin: string;
  let env: NodeJS.ProcessEnv;
  let certs: TestCerts;
  const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'qhcp-pkg-'));
    const packed = await run('npm', ['pack', '--pack-destination', work, '--loglevel=error'], { cwd: ROOT, timeout: 300_000, maxBuffer: 16 << 20 });
    tarball = join(work, packed.stdout.trim().split('\n').at(-1)!);
    prefix = join(work, 'prefix');
    mkdirSync(prefix);
    await run('npm', ['install', '-g', '--prefix', prefix, ...NPM_OPTS, tarball], { cwd: work, timeout: 300_000, maxBuffer: 16 << 20 });
    bin = join(prefix, 'bin');
    // A PATH with the fresh prefix first, and no dev tooling from this checkout on it.
    env = { ...process.env, PATH: `${bin}:${process.env.PATH}`, NODE_OPTIONS: '' };
    certs = makeCerts();
  });

  after(async () => {
    await stopAll();
    certs?.remove();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  /** Runs the installed `qhcp` from PATH in `cwd` (bounded). */
  function qhcp(args: string[], cwd = work, timeoutMs = 30_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const child = spawn('qhcp', args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      child.once('exit', (code) => {
        clearTimeout(t);
        resolve({ code, stdout, stderr });
      });
    });
  }

  it('holds what a user needs and nothing else: dist (with types), the binary, docs, README, LICENSE', async () => {
    const { stdout } = await run('tar', ['tzf', tarball]);
    const files = stdout.split('\n').filter(Boolean);
    for (const f of ['package/bin/qhcp.js', 'package/dist/core/cli/main.js', 'package/dist/core/index.js', 'package/dist/core/index.d.ts', 'package/dist/core/client/index.d.ts', 'package/dist/core/testing/index.d.ts', 'package/dist/plugins/balancer/round-robin.js', 'package/dist/core/protocol/validators/STATUS_RESPONSE.cjs', 'package/dist/plugins/auth/mtls.js', 'package/README.md', 'package/LICENSE', 'package/package.json']) {
      expect(files, f).to.include(f);
    }
    // TypeScript only as declarations, and as the documented examples (docs/examples/*.ts).
    const bad = files.filter((f) => /^package\/(test|bench|scripts|patches|core|plugins)\//.test(f) || (/\.ts$/.test(f.replace(/\.d\.ts$/, '')) && !f.startsWith('package/docs/examples/')) || f.includes('.test.'));
    expect(bad, 'tests, benchmarks, scripts or TypeScript sources in the tarball').to.deep.equal([]);
    const pkg = JSON.parse(readFileSync(join(prefix, 'lib/node_modules/qhcp/package.json'), 'utf8')) as { dependencies: Record<string, string>; scripts?: Record<string, string> };
    expect(Object.keys(pkg.dependencies)).not.to.include.members(['tsx']);
    expect(Object.keys(pkg.dependencies)).not.to.include('typescript');
    expect(pkg.scripts?.postinstall, 'nothing runs at install time').to.equal(undefined);
  });

  it('qhcp --version runs from PATH, and node dist/core/cli/main.js is the same program', async () => {
    const r = await qhcp(['--version']);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout.trim()).to.equal(version);
    const main = join(prefix, 'lib/node_modules/qhcp/dist/core/cli/main.js');
    const direct = await run(process.execPath, [main, '--version'], { cwd: work, env, timeout: 30_000 });
    expect(direct.stdout.trim()).to.equal(version);
    const usage = await qhcp(['-server', '-server-port', 'abc']);
    expect(usage.code).to.equal(2);
    expect(usage.stderr).to.equal('qhcp: --server-port: expected an integer, got "abc"\n');
  });

  it('qhcp demo (what npm start runs) from the installed package: three servers UP, SIGINT stops it all, exit 0', async function () {
    const taken = await takenPorts();
    if (taken.length > 0) {
      console.log(`      skipped: the demo needs UDP ports 4242-4245 and ${taken.join(', ')} ${taken.length > 1 ? 'are' : 'is'} in use`);
      this.skip();
    }
    const { demo, children } = await startDemo(false, [], { bin: 'qhcp', env, cwd: work });
    try {
      expect(children.length).to.be.at.least(4);
      expect(demo.stdout).to.match(/demo running/);
      demo.signal('SIGINT');
      await expectAllGone(demo, children);
    } finally {
      await demo.stop(8000);
      for (const c of children) if (alive(c)) process.kill(c, 'SIGKILL');
    }
  });

  it("the seed's commands: two servers and a load balancer from PATH; status and pick answer", async () => {
    const procs: QhcpProcess[] = [];
    const start = (args: string[]) => {
      const p = new QhcpProcess(args, { cwd: work, env, bin: 'qhcp' });
      procs.push(p);
      return p;
    };
    try {
      const ports = [await freePort(), await freePort()];
      for (const port of ports) {
        const p = start(['-server', '-server-ip', '127.0.0.1', '-server-port', String(port), '-key-file', certs.key, '-cert-file', certs.cert]);
        await p.waitFor(/server listening/, 30_000);
      }
      const lbPort = await freePort();
      const lb = start([
        '-loadbalancer',
        '-servers', ports.map((p) => `127.0.0.1:${p}`).join(','),
        '-loadbalancer-host', '127.0.0.1',
        '-loadbalancer-port', String(lbPort),
        '-max-fail-attempts', '3',
        '-check-interval', '0.5',
        '-reconnect-interval', '1',
        '-cert-file', certs.ca,
        '--status', 'lines',
      ]);
      await lb.waitFor(/load balancer started/, 30_000);
      const status = await waitUntil(
        async () => {
          const r = await qhcp(['status', '--address', `127.0.0.1:${lbPort}`, '--json']);
          if (r.code !== 0) return undefined;
          const st = JSON.parse(r.stdout) as { servers: Array<{ address: string; state: string }> };
          return st.servers.every((s) => s.state === 'UP') ? st : undefined;
        },
        60_000,
        'both servers UP in qhcp status',
        500,
      );
      expect(status.servers.map((s) => s.address).sort()).to.deep.equal(ports.map((p) => `127.0.0.1:${p}`).sort());
      const pick = await qhcp(['pick', '--address', `127.0.0.1:${lbPort}`, '--count', '2']);
      expect(pick.code, pick.stderr).to.equal(0);
      const picked = pick.stdout.trim().split('\n');
      expect(picked).to.have.length(2);
      for (const p of picked) expect(ports.map((x) => `127.0.0.1:${x}`)).to.include(p);

      // status/pick run as one bundled file (scripts/bundle-cli.mjs): the address from a config
      // file (the config loader is loaded from dist/ beside the bundle), a config error reported
      // as one (one ConfigError class for both), anything else handed to the full command line.
      const withConfig = join(work, 'with-config');
      mkdirSync(withConfig);
      writeFileSync(join(withConfig, 'qhcp.config.json'), JSON.stringify({ loadbalancerHost: '127.0.0.1', loadbalancerPort: lbPort }));
      const fromConfig = await qhcp(['status', '--json'], withConfig);
      expect(fromConfig.code, fromConfig.stderr).to.equal(0);
      expect((JSON.parse(fromConfig.stdout) as { servers: unknown[] }).servers).to.have.length(2);
      const unknown = await qhcp(['status', '--bogus'], withConfig);
      expect([unknown.code, unknown.stderr]).to.deep.equal([2, "qhcp: unknown option '--bogus'\n"]);
      const help = await qhcp(['pick', '--help'], withConfig);
      expect([help.code, help.stdout.includes('ask a load balancer which server to use')]).to.deep.equal([0, true]);
      const brokenConfig = join(work, 'broken-config');
      mkdirSync(brokenConfig);
      writeFileSync(join(brokenConfig, 'qhcp.config.json'), '{ "loadbalancerPort": ');
      const broken = await qhcp(['status'], brokenConfig);
      expect(broken.code, broken.stderr).to.equal(2);
      expect(broken.stderr, "a config error, not an unexpected one").to.match(/^qhcp: (?!unexpected).*qhcp\.config\.json/);
    } finally {
      for (const p of procs.reverse()) await p.stop();
    }
  });

  it('as a dependency: a consumer imports qhcp, qhcp/client and qhcp/testing, typechecks and runs docs/examples', async () => {
    const app = join(work, 'consumer');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    await run('npm', ['install', ...NPM_OPTS, tarball], { cwd: app, timeout: 300_000, maxBuffer: 16 << 20 });
    for (const f of readdirSync(join(ROOT, 'docs/examples'))) copyFileSync(join(ROOT, 'docs/examples', f), join(app, f));
    // The examples import from 'qhcp' only; so does this consumer's own test of them.
    writeFileSync(
      join(app, 'check.ts'),
      `import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { defineConfig, ConfigError, definePlugin } from 'qhcp';
import { QueryClient } from 'qhcp/client';
import { fakeCore, applyPlugin, collect, pick, backend, build } from 'qhcp/testing';
import queueLength from './queue-length.ts';
import sticky from './sticky-balancer.ts';

assert.equal(typeof QueryClient.open, 'function');
assert.equal(typeof definePlugin, 'function');
defineConfig({ checkInterval: 2, plugins: [queueLength({ file: 'jobs.txt' }), 'round-robin'] });

writeFileSync('jobs.txt', 'a\\nb\\n\\nc\\n');
const server = fakeCore('server', { configFile: process.cwd() + '/qhcp.config.ts' });
await applyPlugin(server, queueLength, { file: 'jobs.txt' });
const { metrics, definitions } = await collect(server);
assert.equal(metrics.queueLength, 3);
assert.deepEqual(definitions.map((d) => d.name), ['queueLength']);

const lb = fakeCore('loadbalancer');
await applyPlugin(lb, sticky);
const servers = [backend('10.0.0.1:4243'), backend('10.0.0.2:4243'), backend('10.0.0.3:4243')];
const first = pick(lb, servers, 'user-42');
assert.ok(first);
assert.equal(pick(lb, servers, 'user-42'), first);
assert.equal(pick(lb, servers), undefined);
// @ts-expect-error interval must be a number: a type error here, a ConfigError at run time
assert.throws(() => build(queueLength, { interval: 'often' }), (e: unknown) => e instanceof ConfigError);
console.log('examples ok');
`,
    );
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          strict: true,
          noEmit: true,
          allowImportingTsExtensions: true,
          skipLibCheck: true,
          types: ['node'],
          typeRoots: [join(ROOT, 'node_modules/@types')],
        },
        include: ['*.ts'],
      }),
    );
    // A wrong option type in a config is a type error.
    writeFileSync(join(app, 'bad-config.ts'), "import { defineConfig } from 'qhcp';\nimport queueLength from './queue-length.ts';\nexport default defineConfig({ plugins: [queueLength({ file: 'x', interval: 'often' })] });\n");
    const tsc = join(ROOT, 'node_modules/typescript/bin/tsc');
    const typecheck = await run(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: app, timeout: 120_000 }).then(
      () => '',
      (e: { stdout: string }) => e.stdout,
    );
    expect(typecheck.split('\n').filter(Boolean).every((l) => l.startsWith('bad-config.ts')), typecheck).to.equal(true);
    expect(typecheck).to.match(/bad-config\.ts\(3,\d+\): error TS2322: Type 'string' is not assignable to type 'number'/);
    rmSync(join(app, 'bad-config.ts'));

    // Run the consumer's check the way it would: the TypeScript through the installed qhcp's loader
    // is not for user programs, so compile it with tsc and run the JavaScript.
    writeFileSync(join(app, 'tsconfig.emit.json'), JSON.stringify({ extends: './tsconfig.json', compilerOptions: { noEmit: false, outDir: 'out', rewriteRelativeImportExtensions: true } }));
    await run(process.execPath, [tsc, '-p', 'tsconfig.emit.json'], { cwd: app, timeout: 120_000 });
    writeFileSync(join(app, 'out/package.json'), JSON.stringify({ type: 'module' }));
    const checked = await run(process.execPath, ['out/check.js'], { cwd: app, timeout: 60_000 });
    expect(checked.stdout).to.include('examples ok');

    // A real agent, run from the consumer's node_modules/.bin, loading a qhcp.config.ts that
    // imports 'qhcp' and the example by path: no tsx, no typescript at run time.
    writeFileSync(join(app, 'jobs.txt'), 'one\ntwo\n');
    writeFileSync(
      join(app, 'qhcp.config.ts'),
      "import { defineConfig } from 'qhcp';\nimport queueLength from './queue-length.ts';\nexport default defineConfig({ logLevel: 'info', plugins: [queueLength({ file: 'jobs.txt', interval: 0.2 }), 'system-metrics'] });\n",
    );
    const cfg = await run(join(app, 'node_modules/.bin/qhcp'), ['config', '--json', '--role', 'server'], { cwd: app, env, timeout: 60_000 });
    expect((JSON.parse(cfg.stdout) as { plugins: string[] }).plugins).to.deep.equal(['queue-length', 'system-metrics']);
    const port = await freePort();
    const agent = new QhcpProcess(['server', '--server-ip', '127.0.0.1', '--server-port', String(port)], { cwd: app, env, bin: join(app, 'node_modules/.bin/qhcp') });
    try {
      const line = await agent.waitFor(/server listening.*/, 30_000);
      expect(line[0]).to.match(/plugins\.metrics=queue-length,system-metrics/);
      // Ask it over QHCP with the client the package exports, from the consumer's side.
      writeFileSync(
        join(app, 'ask.mjs'),
        `import { QueryClient } from 'qhcp/client';\ntry { await QueryClient.open({ host: '127.0.0.1', port: ${port}, timeoutMs: 5000 }); console.log('no error'); } catch (e) { console.log(String(e.message)); }\n`,
      );
      const asked = await run(process.execPath, ['ask.mjs'], { cwd: app, timeout: 30_000 });
      // An agent is not a load balancer: the client says so instead of hanging.
      expect(asked.stdout).to.match(/not a load balancer|UNSUPPORTED_REQUEST|only role "checker"/);
    } finally {
      await agent.stop();
    }
    expect(existsSync(join(app, 'node_modules/tsx')), 'tsx is not installed with qhcp').to.equal(false);
    expect(existsSync(join(app, 'node_modules/typescript')), 'typescript is not installed with qhcp').to.equal(false);
  });
});
