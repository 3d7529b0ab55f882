/**
 * Configuration: where the file is found (and in which order), every kind of validation
 * problem with its exact `path: message (got value)` line, plugin option schemas, flags over
 * the file (in buildConfig and through `qhcp config --print`), and through the real binary: a
 * bad config exits 2 listing every problem before anything listens. Also keeps
 * docs/configuration.md in step with CONFIG_SCHEMA and the CLI flags.
 */
import { mkdtempSync, mkdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { spawnSync } from 'node:child_process';
import { expect } from 'chai';
import { buildConfig, defineConfig, findConfigFile, jsonSchema, optionMeta, CONFIG_SCHEMA, type ConfigKey, type QhcpConfig } from '../core/config/config.ts';
import { resolvePlugins, type QhcpPlugin } from '../core/plugin/loader.ts';
import { importUserModule } from '../core/config/user-modules.ts';
import { ConfigError, LocalError } from '../core/errors.ts';
import { buildProgram, flagOf, parseConfigFlags } from '../core/cli/cli.ts';
import { regenerate } from '../scripts/gen-config-docs.ts';
import { freePort, runQhcp, stopAll, ROOT } from './helpers/procs.ts';

const FIXTURES = fileURLToPath(new URL('./fixtures/plugins/', import.meta.url));
const QUEUE_LENGTH = fileURLToPath(new URL('../docs/examples/queue-length.ts', import.meta.url));

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'qhcp-config-'));
  dirs.push(d);
  return d;
}

/** The problems buildConfig reports for `data` (fails the test if it validates). */
function problems(data: unknown, flags: Partial<QhcpConfig> = {}): string[] {
  try {
    buildConfig(data, '/etc/qhcp/qhcp.config.json', flags);
  } catch (e) {
    expect(e).to.be.instanceOf(ConfigError);
    return (e as ConfigError).problems;
  }
  throw new Error(`expected ${JSON.stringify(data)} not to validate`);
}

/** The problems resolvePlugins reports for `plugins` (config file in the fixtures folder). */
async function pluginProblems(plugins: unknown[], role: 'server' | 'loadbalancer' = 'server'): Promise<string[]> {
  const err = await resolvePlugins({ plugins: plugins as QhcpConfig['plugins'], defaults: false }, role, join(FIXTURES, 'qhcp.config.json')).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected ${JSON.stringify(plugins)} to be rejected`).to.be.instanceOf(ConfigError);
  return (err as ConfigError).problems;
}

/** Whether a UDP port on 127.0.0.1 can be bound (nobody listens on it). */
async function portIsFree(port: number): Promise<boolean> {
  const sock = createSocket('udp4');
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(port, '127.0.0.1', () => resolve());
    });
    return true;
  } catch {
    return false;
  } finally {
    sock.close();
  }
}

describe('configuration', function () {
  this.timeout(60_000);
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  afterEach(stopAll);

  describe('discovery (cosmiconfig, the working directory only)', () => {
    it('prefers qhcp.config.ts, then .js, .json, .qhcprc, package.json#qhcp; --config beats them all', async () => {
      const dir = tempDir();
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'app', type: 'module', qhcp: { node: 'from-package' } }));
      writeFileSync(join(dir, '.qhcprc'), JSON.stringify({ node: 'from-rc' }));
      writeFileSync(join(dir, 'qhcp.config.json'), JSON.stringify({ node: 'from-json' }));
      writeFileSync(join(dir, 'qhcp.config.js'), "export default { node: 'from-js' };\n");
      writeFileSync(join(dir, 'qhcp.config.ts'), "const node: string = 'from-ts';\nexport default { node };\n");
      mkdirSync(join(dir, 'elsewhere'));
      writeFileSync(join(dir, 'elsewhere', 'custom.json'), JSON.stringify({ node: 'from-flag' }));

      const explicit = await findConfigFile({ cwd: dir, file: 'elsewhere/custom.json' });
      expect(explicit).to.deep.equal({ data: { node: 'from-flag' }, file: join(dir, 'elsewhere', 'custom.json') });
      for (const [file, node] of [
        ['qhcp.config.ts', 'from-ts'],
        ['qhcp.config.js', 'from-js'],
        ['qhcp.config.json', 'from-json'],
        ['.qhcprc', 'from-rc'],
        ['package.json', 'from-package'],
      ] as const) {
        const found = await findConfigFile({ cwd: dir });
        expect(found.file, `with ${file} present`).to.equal(join(dir, file));
        expect((found.data as { node: string }).node).to.equal(node);
        unlinkSync(join(dir, file));
      }
      expect(await findConfigFile({ cwd: dir })).to.deep.equal({ data: undefined, file: undefined });
    });

    it('skips a package.json without a qhcp key, and never looks in parent directories', async () => {
      const parent = tempDir();
      writeFileSync(join(parent, 'qhcp.config.json'), JSON.stringify({ node: 'parent' }));
      const dir = join(parent, 'child');
      mkdirSync(dir);
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'child' }));
      expect(await findConfigFile({ cwd: dir })).to.deep.equal({ data: undefined, file: undefined });
    });

    it('a --config file that is missing or does not load is a QHCP_ERR_CONFIG_LOAD error', async () => {
      const dir = tempDir();
      const missing = await findConfigFile({ cwd: dir, file: 'nope.json' }).catch((e: unknown) => e);
      expect(missing).to.be.instanceOf(LocalError).and.include({ code: 'QHCP_ERR_CONFIG_LOAD', message: 'config file nope.json not found' });
      writeFileSync(join(dir, 'broken.json'), '{ "checkInterval": ');
      const broken = await findConfigFile({ cwd: dir, file: 'broken.json' }).catch((e: unknown) => e);
      expect(broken).to.be.instanceOf(LocalError).and.include({ code: 'QHCP_ERR_CONFIG_LOAD' });
      expect((broken as Error).message).to.match(/^cannot load broken\.json: /);
      // A TypeScript config that does not compile, or imports what is not there: the place, on the first line.
      writeFileSync(join(dir, 'broken.ts'), 'const a: number = 1;\nexport default { checkInterval: a \n');
      const syntax = await findConfigFile({ cwd: dir, file: 'broken.ts' }).catch((e: unknown) => e);
      expect((syntax as Error).message.split('\n')[0]).to.match(/^cannot load broken\.ts: \S*broken\.ts:3:1: Expected "}" but found end of file$/);
      writeFileSync(join(dir, 'lost.ts'), "import { x } from './gone.ts';\nexport default { x };\n");
      const lost = await findConfigFile({ cwd: dir, file: 'lost.ts' }).catch((e: unknown) => e);
      expect((lost as Error).message.split('\n')[0]).to.match(/^cannot load lost\.ts: \S*lost\.ts:1:19: Could not resolve "\.\/gone\.ts"$/);
      // An import() of a computed path is not bundled; its failure names the config file, not the bundle.
      writeFileSync(join(dir, 'computed.ts'), "const p: string = './h.ts';\nexport default { m: await import(p) };\n");
      const computed = await findConfigFile({ cwd: dir, file: 'computed.ts' }).catch((e: unknown) => e);
      expect((computed as Error).message).to.include(`"./h.ts" from "${pathToFileURL(join(dir, 'computed.ts')).href}"`).and.not.include('data:');
    });

    it('loads ESM-syntax .ts/.js configs and plugin modules in a directory whose package.json is not "type": "module"', async () => {
      const dir = tempDir();
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'cjs-app' }));
      const configTs = join(ROOT, 'core/config/config.ts');
      writeFileSync(join(dir, 'qhcp.config.ts'), `import { defineConfig } from ${JSON.stringify(configTs)};\nexport default defineConfig({ checkInterval: 3, plugins: ['./mine.ts'] });\n`);
      writeFileSync(join(dir, 'mine.ts'), "export default class Mine { static schema = { type: 'object', properties: {} }; readonly name = 'mine'; apply(): void {} }\n");
      writeFileSync(join(dir, 'other.js'), 'export default { checkInterval: 4 };\n');
      const found = await findConfigFile({ cwd: dir });
      expect(found.data).to.deep.include({ checkInterval: 3 });
      expect((await findConfigFile({ cwd: dir, file: 'other.js' })).data).to.deep.equal({ checkInterval: 4 });
      const r = await runQhcp(['config', '--json', '--role', 'server'], { cwd: dir });
      expect(r.code, r.stderr).to.equal(0);
      const out = JSON.parse(r.stdout) as { config: QhcpConfig; plugins: string[] };
      expect(out.config.checkInterval).to.equal(3);
      expect(out.plugins).to.deep.equal(['mine', 'system-metrics']);
    });

    it('a TypeScript config: local imports keep their own import.meta.url and are read afresh, a package resolves from the config directory, `qhcp` is the running copy; a .cts module requires from where it lies', async () => {
      const dir = tempDir();
      mkdirSync(join(dir, 'node_modules/esm-only'), { recursive: true });
      writeFileSync(join(dir, 'node_modules/esm-only/package.json'), JSON.stringify({ name: 'esm-only', exports: { import: './index.mjs' } }));
      writeFileSync(join(dir, 'node_modules/esm-only/index.mjs'), "export const tag = 'esm-only';\n");
      mkdirSync(join(dir, 'node_modules/cjs-pkg'), { recursive: true });
      writeFileSync(join(dir, 'node_modules/cjs-pkg/index.js'), 'module.exports = { v: 7 };\n');
      // helper.ts uses import.meta (transformed with its own values), n.ts does not (left to the build).
      writeFileSync(join(dir, 'helper.ts'), "export const where: string = import.meta.url;\nexport { n } from './n.ts';\n");
      writeFileSync(join(dir, 'n.ts'), 'export const n: number = 1;\n');
      writeFileSync(
        join(dir, 'qhcp.config.ts'),
        "import { definePlugin } from 'qhcp';\nimport { where, n } from './helper.ts';\nimport { tag } from 'esm-only';\nexport default { checkInterval: n, helperUrl: where, configUrl: import.meta.url, tag, definePlugin };\n",
      );
      writeFileSync(join(dir, 'dep.cjs'), 'exports.n = 5;\n');
      writeFileSync(join(dir, 'other.cts'), "const { v } = require('cjs-pkg');\nconst { n } = require('./dep.cjs');\nconst path: typeof import('node:path') = require('node:path');\nmodule.exports = { checkInterval: n, v, sep: path.sep };\n");
      const data = (await findConfigFile({ cwd: dir })).data as Record<string, unknown>;
      const core = await import('../core/index.ts');
      expect(data).to.deep.include({ checkInterval: 1, tag: 'esm-only', helperUrl: pathToFileURL(join(dir, 'helper.ts')).href, configUrl: pathToFileURL(join(dir, 'qhcp.config.ts')).href });
      expect(data.definePlugin, 'qhcp is the running copy').to.equal(core.definePlugin);
      writeFileSync(join(dir, 'n.ts'), 'export const n: number = 2;\n');
      expect(((await findConfigFile({ cwd: dir })).data as Record<string, unknown>).checkInterval, 'an imported file is read afresh').to.equal(2);
      // (A config file is .ts/.mts/.js/.mjs/.json; a plugin module may also be .cts.)
      expect((await importUserModule(pathToFileURL(join(dir, 'other.cts')).href)).default).to.deep.equal({ checkInterval: 5, v: 7, sep: '/' });
    });

    it('loading a TypeScript config leaves no thread and no process behind (no loader thread, esbuild stopped)', async () => {
      const dir = tempDir();
      writeFileSync(join(dir, 'qhcp.config.ts'), "import { defineConfig } from 'qhcp';\nexport default defineConfig({ checkInterval: 3 as number });\n");
      const script = join(dir, 'probe.mts');
      const threads = "() => readdirSync('/proc/self/task').length";
      const children = "() => readdirSync('/proc/self/task').flatMap((t) => readFileSync(`/proc/self/task/${t}/children`, 'utf8').trim().split(/\\s+/).filter(Boolean))";
      writeFileSync(
        script,
        [
          "import { readFileSync, readdirSync } from 'node:fs';",
          "import { readFile } from 'node:fs/promises';",
          `const { findConfigFile } = await import(${JSON.stringify(pathToFileURL(join(ROOT, 'core/config/config.ts')).href)});`,
          // libuv's thread pool starts with the first asynchronous file read: before counting.
          'await readFile(import.meta.filename);',
          `const threads = ${threads}, children = ${children};`,
          'const before = threads(), childrenBefore = children();',
          `const { data } = await findConfigFile({ cwd: ${JSON.stringify(dir)} });`,
          // (tsx, which runs this script, has an esbuild of its own: only new children count.)
          'const added = () => children().filter((c) => !childrenBefore.includes(c));',
          'for (let i = 0; i < 50 && added().length > 0; i++) await new Promise((r) => setTimeout(r, 20));',
          'console.log(JSON.stringify({ before, after: threads(), children: added(), checkInterval: data.checkInterval }));',
        ].join('\n'),
      );
      const r = spawnSync(process.execPath, ['--import', 'tsx', script], { cwd: ROOT, encoding: 'utf8', timeout: 30_000 });
      expect(r.status, r.stderr).to.equal(0);
      const out = JSON.parse(r.stdout) as { before: number; after: number; children: string[]; checkInterval: number };
      expect(out.checkInterval).to.equal(3);
      expect(out.after, 'threads after loading').to.equal(out.before);
      expect(out.children, 'child processes left').to.deep.equal([]);
    });

    it('the binary finds the file in its working directory, and --config overrides that', async () => {
      const dir = tempDir();
      writeFileSync(join(dir, '.qhcprc'), JSON.stringify({ checkInterval: 7 }));
      writeFileSync(join(dir, 'other.json'), JSON.stringify({ checkInterval: 9 }));
      const found = await runQhcp(['config', '--print', '--json'], { cwd: dir });
      expect(found.code, found.stderr).to.equal(0);
      const a = JSON.parse(found.stdout) as { file: string; config: QhcpConfig; sources: Record<string, string> };
      expect(a.file).to.equal(join(dir, '.qhcprc'));
      expect(a.config.checkInterval).to.equal(7);
      expect(a.sources.checkInterval).to.equal(`file ${join(dir, '.qhcprc')}`);
      const named = await runQhcp(['config', '--json', '--config', 'other.json'], { cwd: dir });
      expect(named.code, named.stderr).to.equal(0);
      expect((JSON.parse(named.stdout) as { config: QhcpConfig }).config.checkInterval).to.equal(9);
    });
  });

  describe('validation of the core schema: one line per problem, `path: message (got value)`', () => {
    const cases: Array<[string, unknown, string]> = [
      ['below a minimum', { checkInterval: -3 }, 'checkInterval: must be >= 0.01 (got -3)'],
      ['above a maximum', { serverPort: 70000 }, 'serverPort: must be <= 65535 (got 70000)'],
      ['wrong type', { checkInterval: 'fast' }, 'checkInterval: must be number (got "fast")'],
      ['not an integer', { maxFailAttempts: 2.5 }, 'maxFailAttempts: must be integer (got 2.5)'],
      ['not a boolean', { defaults: 'yes' }, 'defaults: must be boolean (got "yes")'],
      ['not one of an enum', { status: 'fancy' }, 'status: must be one of "auto", "table", "lines", "json", "none" (got "fancy")'],
      ['empty string', { node: '' }, 'node: must NOT have fewer than 1 characters (got "")'],
      ['unknown key', { bogus: 1 }, 'bogus: is not a known option'],
      ['misspelt key', { checkIntervall: 2 }, 'checkIntervall: is not a known option (did you mean checkInterval?)'],
      ['flag spelling used as a key', { 'max-fail-attempts': 2 }, 'max-fail-attempts: is not a known option (did you mean maxFailAttempts?)'],
      ['servers not a list', { servers: 'a:1' }, 'servers: must be array (got "a:1")'],
      ['server neither string nor object', { servers: [5] }, 'servers[0]: must be string or object (got 5)'],
      ['server object without address', { servers: [{ weight: 2 }] }, "servers[0]: must have required property 'address'"],
      ['server weight out of range', { servers: ['a', { address: 'b', weight: 5000 }] }, 'servers[1].weight: must be <= 1000 (got 5000)'],
      ['server object with an unknown key', { servers: [{ address: 'a', port: 1 }] }, 'servers[0].port: is not a known option'],
      ['plugins not a list', { plugins: 'log' }, 'plugins: must be array (got "log")'],
      ['plugin entry of the wrong type', { plugins: ['log', 42] }, 'plugins[1]: must be string or array or object (got 42)'],
      ['plugin tuple with non-object options', { plugins: [['log', 5]] }, 'plugins[0][1]: must be object (got 5)'],
      ['plugin tuple too long', { plugins: [['log', {}, 3]] }, 'plugins[0]: must NOT have more than 2 items'],
      ['check timeout not shorter than the interval', { checkInterval: 1, checkTimeout: 2 }, 'checkTimeout: must be shorter than checkInterval (1 s) (got 2)'],
      ['a file that exports no object', [1, 2], '/etc/qhcp/qhcp.config.json: must export an object'],
    ];
    for (const [what, data, line] of cases) {
      it(what, () => expect(problems(data)).to.deep.equal([line]));
    }

    it('lists every problem of a file, not just the first', () => {
      expect(problems({ checkInterval: 0, jitter: 0.9, status: 'x', servers: [{ address: 'a', weight: -1 }, 7], nope: true })).to.have.members([
        'checkInterval: must be >= 0.01 (got 0)',
        'jitter: must be <= 0.5 (got 0.9)',
        'status: must be one of "auto", "table", "lines", "json", "none" (got "x")',
        'servers[0].weight: must be >= 0 (got -1)',
        'servers[1]: must be string or object (got 7)',
        'nope: is not a known option',
      ]);
    });

    it('a flag value is validated like a file value', () => {
      expect(problems({}, { maxFailAttempts: 0 })).to.deep.equal(['maxFailAttempts: must be >= 1 (got 0)']);
    });
  });

  describe("validation of each plugin's own options", () => {
    it('reports a plugin option below its minimum by path (the issue’s example)', async () => {
      expect(await pluginProblems(['system-metrics', ['./interval-plugin.ts', { interval: -3 }]])).to.deep.equal(['plugins[1].options.interval: must be >= 0.1 (got -3)']);
    });

    it('fills option defaults from the plugin schema', async () => {
      const [p] = (await resolvePlugins({ plugins: [['./interval-plugin.ts', { interval: 0.5 }]], defaults: false }, 'server', join(FIXTURES, 'qhcp.config.json'))) as Array<QhcpPlugin & { options: object }>;
      expect(p!.options).to.deep.equal({ interval: 0.5, label: 'none' });
    });

    const cases: Array<[string, unknown[], string | RegExp]> = [
      ['an unknown option, with a suggestion', [{ module: './interval-plugin.ts', options: { intervl: 2 } }], 'plugins[0].options.intervl: is not a known option (did you mean interval?)'],
      ['options that are not an object', [{ module: './interval-plugin.ts', options: 5 }], 'plugins[0].options: must be object (got 5)'],
      ['an unknown built-in name', ['round-robin', 'round-robbin'], /^plugins\[1\]: cannot load plugin "round-robbin": unknown plugin \(built-ins: .*round-robin.*; modules start with \.\/ or \/\)$/],
      ['a module that does not exist', ['./missing-plugin.ts'], /^plugins\[0\]: cannot load plugin "\.\/missing-plugin\.ts": /],
      ['a module without a default export', ['./no-default.ts'], 'plugins[0]: module "./no-default.ts" has no default export (export default definePlugin({ ... }))'],
      ['a default export that is not a plugin', ['./not-a-plugin.ts'], 'plugins[0]: "./not-a-plugin.ts" does not construct a plugin (name + apply)'],
      ['an object with neither name, module nor apply', [{ options: {} }], 'plugins[0]: needs a name (built-in), a module path, or an object with name and apply()'],
      ['a constructor that rejects its options', [[QUEUE_LENGTH, { read: 5 }]], 'plugins[0]: options.read: must be a function (got number)'],
      ['a missing dependency', [{ name: 'needs-b', dependencies: ['b'], apply() {} }], 'plugin needs-b: needs plugin "b", which is not in the list'],
    ];
    for (const [what, plugins, line] of cases) {
      it(what, async () => {
        const got = await pluginProblems(plugins);
        expect(got).to.have.length(1);
        if (typeof line === 'string') expect(got[0]).to.equal(line);
        else expect(got[0]).to.match(line);
      });
    }

    it('refuses a plugin class without an options schema, saying how to give one', async () => {
      const dir = tempDir();
      writeFileSync(join(dir, 'bare.mjs'), "export default class Bare { name = 'bare'; apply() {} }\n");
      const problems = await resolvePlugins({ plugins: ['./bare.mjs'], defaults: false }, 'server', join(dir, 'qhcp.config.json')).then(
        () => [],
        (e: unknown) => (e as ConfigError).problems,
      );
      expect(problems).to.deep.equal([`plugins[0]: plugin "./bare.mjs" has no options schema; define it with definePlugin({ name, schema, apply }) from 'qhcp' (or give its class a static \`schema\`)`]);
    });

    it('a definePlugin() definition called with options is a plugin entry; its options are checked at start-up too', async () => {
      const { default: queueLength } = (await import(QUEUE_LENGTH)) as typeof import('../docs/examples/queue-length.ts');
      const ok = await resolvePlugins({ plugins: [queueLength({ file: 'q.txt', interval: 2 })], defaults: false }, 'server');
      expect(ok.map((p) => p.name)).to.deep.equal(['queue-length']);
      // A wrong type is a type error in qhcp.config.ts (below) and a start-up error (here).
      // @ts-expect-error interval must be a number
      const bad = queueLength({ file: 'q.txt', interval: 'often' });
      const problems = await resolvePlugins({ plugins: [bad], defaults: false }, 'server').then(
        () => [],
        (e: unknown) => (e as ConfigError).problems,
      );
      expect(problems).to.deep.equal(['plugins[0].options.interval: must be number (got "often")']);
    });

    it('an alert plugin joins the default transition log instead of replacing it; defaults: false turns the log off', async () => {
      const names = async (plugins: unknown[], defaults = true) => (await resolvePlugins({ plugins: plugins as QhcpConfig['plugins'], defaults }, 'loadbalancer')).map((p) => p.name);
      const webhook = ['webhook', { url: 'http://127.0.0.1:9/hook' }];
      expect(await names([webhook])).to.deep.equal(['webhook', 'round-robin', 'log']);
      expect(await names([webhook, ['log', { json: true }]])).to.deep.equal(['webhook', 'log', 'round-robin']);
      expect(await names([webhook], false)).to.deep.equal(['webhook']);
    });

    it('lists every plugin problem at once', async () => {
      expect(await pluginProblems(['nope', ['./interval-plugin.ts', { interval: -1, label: 3 }]])).to.have.length(3);
    });

    it('keeps only the plugins for the role, adds role defaults for families left out, none with defaults: false', async () => {
      const names = async (plugins: unknown[], role: 'server' | 'loadbalancer', defaults = true) =>
        (await resolvePlugins({ plugins: plugins as QhcpConfig['plugins'], defaults }, role, join(FIXTURES, 'qhcp.config.json'))).map((p) => p.name);
      const list = [[QUEUE_LENGTH, { file: 'q.txt' }], 'round-robin'];
      // queue-length is a metrics plugin: it takes the place of the default system-metrics.
      expect(await names(list, 'server')).to.deep.equal(['queue-length']);
      expect(await names(['round-robin'], 'server')).to.deep.equal(['system-metrics']);
      expect(await names(list, 'loadbalancer')).to.deep.equal(['round-robin', 'log']);
      expect(await names(list, 'loadbalancer', false)).to.deep.equal(['round-robin']);
      expect(await names([], 'server', false)).to.deep.equal([]);
    });
  });

  describe('merging: defaults < file < flags', () => {
    it('buildConfig: a flag overrides the file, the file overrides the default, and sources say which', () => {
      const { config, sources } = buildConfig({ checkInterval: 5, maxFailAttempts: 4, certFile: 'certs/server.pem' }, '/srv/qhcp/qhcp.config.json', { checkInterval: 1 });
      expect(config.checkInterval).to.equal(1);
      expect(config.maxFailAttempts).to.equal(4);
      expect(config.reconnectInterval).to.equal(30);
      expect(sources).to.include({ checkInterval: 'flag', maxFailAttempts: 'file /srv/qhcp/qhcp.config.json', reconnectInterval: 'default' });
      // Paths in a file are relative to the file.
      expect(config.certFile).to.equal('/srv/qhcp/certs/server.pem');
    });

    it('the result is deep-frozen, except inline plugin objects, which keep their state', () => {
      const inline = { name: 'counter', n: 0, apply() {} };
      const { config } = buildConfig({ servers: ['a'], plugins: [inline, ['log', { json: true }]] }, undefined, {});
      expect(Object.isFrozen(config)).to.equal(true);
      expect(Object.isFrozen(config.servers)).to.equal(true);
      expect(Object.isFrozen((config.plugins[1] as [string, object])[1])).to.equal(true);
      expect(config.plugins[0]).to.equal(inline);
      inline.n++;
      expect(inline.n).to.equal(1);
    });

    it('defineConfig returns the config it is given (it only adds types)', () => {
      const c = { checkInterval: 2, plugins: ['round-robin'] };
      expect(defineConfig(c)).to.equal(c);
    });

    it('qhcp config --print (text and --json) shows flags over the file and where each value came from', async () => {
      const dir = tempDir();
      const file = join(dir, 'qhcp.config.json');
      writeFileSync(file, JSON.stringify({ checkInterval: 5, maxFailAttempts: 4, serverPort: 5000, plugins: ['round-robin'] }));
      const json = await runQhcp(['config', '--print', '--json', '--check-interval', '1', '-server-port', '6000', '--role', 'server'], { cwd: dir });
      expect(json.code, json.stderr).to.equal(0);
      const out = JSON.parse(json.stdout) as { file: string; config: QhcpConfig; plugins: string[]; sources: Record<string, string> };
      expect(out.file).to.equal(file);
      expect(out.config).to.include({ checkInterval: 1, maxFailAttempts: 4, serverPort: 6000, jitter: 0.1 });
      expect(out.sources).to.include({ checkInterval: 'flag', serverPort: 'flag', maxFailAttempts: `file ${file}`, jitter: 'default' });
      expect(out.plugins).to.deep.equal(['system-metrics']); // round-robin is for load balancers

      const text = await runQhcp(['config', '--print', '--check-interval', '1'], { cwd: dir });
      expect(text.code, text.stderr).to.equal(0);
      const row = (k: string) => text.stdout.split('\n').find((l) => l.startsWith(`${k} `))?.split(/\s+/);
      expect(row('checkInterval')).to.deep.equal(['checkInterval', '1', 'flag']);
      expect(row('maxFailAttempts')).to.deep.equal(['maxFailAttempts', '4', 'file', file]);
      expect(row('jitter')).to.deep.equal(['jitter', '0.1', 'default']);
      expect(text.stdout).to.match(/^plugins\s+round-robin, log\s+\(file /m);
    });

    it('the repo’s own qhcp.config.ts validates, with its plugins, for both roles', async () => {
      const found = await findConfigFile({ cwd: ROOT });
      expect(basename(found.file!)).to.equal('qhcp.config.ts');
      const { config } = buildConfig(found.data, found.file, {});
      expect(config.servers).to.deep.equal([]);
      expect(config).to.include({ checkInterval: 2, reconnectInterval: 4 });
      const server = (await resolvePlugins(config, 'server', found.file)).map((p) => p.name);
      const lb = (await resolvePlugins(config, 'loadbalancer', found.file)).map((p) => p.name);
      expect(server).to.include.members(['system-metrics', 'queue-length']);
      expect(lb).to.include.members(['round-robin', 'log']);
    });
  });

  describe('through the binary: a bad config exits 2 before anything listens', () => {
    it('lists every core and plugin problem, exits 2, and leaves the port free (server and load balancer)', async () => {
      const dir = tempDir();
      writeFileSync(
        join(dir, 'bad.json'),
        JSON.stringify({
          checkInterval: -1,
          status: 'fancy',
          'check-interval': 3,
          plugins: ['round-robin', [join(FIXTURES, 'interval-plugin.ts'), { interval: -3 }], 'nope', 42],
        }),
      );
      const expected = [
        'check-interval: is not a known option (did you mean checkInterval?)',
        'checkInterval: must be >= 0.01 (got -1)',
        'status: must be one of "auto", "table", "lines", "json", "none" (got "fancy")',
        'plugins[3]: must be string or array or object (got 42)',
        'plugins[1].options.interval: must be >= 0.1 (got -3)',
      ];
      for (const role of ['server', 'loadbalancer'] as const) {
        const port = await freePort();
        const args =
          role === 'server'
            ? ['-server', '-server-ip', '127.0.0.1', '-server-port', String(port), '-config', 'bad.json']
            : ['-loadbalancer', '-servers', '127.0.0.1:1', '-loadbalancer-host', '127.0.0.1', '-loadbalancer-port', String(port), '--config', 'bad.json'];
        const r = await runQhcp(args, { cwd: dir });
        expect(r.code, `${role}: ${r.stderr}`).to.equal(2);
        const lines = r.stderr.trimEnd().split('\n');
        expect(lines[0]).to.equal('qhcp: invalid configuration:');
        const listed = lines.slice(1).map((l) => l.trim());
        expect(listed).to.include.members(expected);
        expect(listed.some((l) => l.startsWith('plugins[2]: cannot load plugin "nope"'))).to.equal(true);
        expect(listed).to.have.length(expected.length + 1);
        expect(r.stdout + r.stderr).not.to.match(/listening|started/);
        expect(await portIsFree(port), `${role} port ${port} is free`).to.equal(true);
      }
    });

    it('a failing plugin start hook: exit 1 with one clear line naming plugin and hook, nothing listening', async () => {
      const dir = tempDir();
      writeFileSync(join(dir, 'qhcp.config.json'), JSON.stringify({ plugins: [join(FIXTURES, 'failing-start.ts')] }));
      const port = await freePort();
      const r = await runQhcp(['server', '--server-ip', '127.0.0.1', '--server-port', String(port)], { cwd: dir });
      expect(r.code).to.equal(1);
      expect(r.stderr.trimEnd().split('\n').at(-1)).to.equal('qhcp: plugin failing-start in hook start threw: cannot open the work queue');
      expect(r.stderr).not.to.match(/listening/);
      expect(await portIsFree(port)).to.equal(true);
    });
  });

  describe('docs/configuration.md', () => {
    const doc = () => readFileSync(new URL('../docs/configuration.md', import.meta.url), 'utf8');
    const section = (name: string) => {
      const text = doc();
      const begin = text.indexOf(`<!-- ${name}:begin -->`);
      const end = text.indexOf(`<!-- ${name}:end -->`);
      expect(begin, `${name} markers`).to.be.greaterThan(-1);
      expect(end).to.be.greaterThan(begin);
      return text.slice(begin, end);
    };
    /** | `key` | type | `default` | `--flag` | meaning | */
    const rows = () => {
      const out = new Map<string, { dflt: string; flags: string[] }>();
      for (const line of section('config-keys').split('\n')) {
        const cells = line.split('|').map((c) => c.trim());
        const key = /^`(\w+)`$/.exec(cells[1] ?? '')?.[1];
        if (!key) continue;
        out.set(key, { dflt: cells[3]!, flags: [...cells[4]!.matchAll(/`(--[a-z-]+)`/g)].map((m) => m[1]!) });
      }
      return out;
    };

    it('has a row for every CONFIG_SCHEMA property, and no other', () => {
      expect([...rows().keys()].sort()).to.deep.equal(Object.keys(CONFIG_SCHEMA.properties).sort());
    });

    it('is what npm run docs:config generates from CONFIG_SCHEMA (table and schema)', () => {
      expect(regenerate(doc()), 'run npm run docs:config').to.equal(doc());
    });

    it('gives each key its schema default', () => {
      const r = rows();
      for (const [key, schema] of Object.entries(CONFIG_SCHEMA.properties)) {
        const d = (schema as { default?: unknown }).default;
        const cell = r.get(key)!.dflt;
        if (d === undefined) expect(cell, key).to.not.match(/^`/);
        else expect(cell, key).to.equal(`\`${JSON.stringify(d)}\``);
      }
    });

    it('names flags the CLI really has', () => {
      const program = buildProgram();
      const flags = new Set(program.commands.flatMap((c) => c.options.map((o) => o.long)));
      for (const [key, row] of rows()) for (const f of row.flags) expect(flags.has(f), `${key}: ${f}`).to.equal(true);
    });

    it('embeds the JSON schema exactly as CONFIG_SCHEMA, less its x-qhcp annotations', () => {
      const block = /```json\n([\s\S]*?)\n```/.exec(section('config-schema'))?.[1];
      const parsed = JSON.parse(block!) as { properties: Record<string, object> };
      expect(parsed).to.deep.equal(jsonSchema());
      expect(Object.keys(parsed.properties)).to.deep.equal(Object.keys(CONFIG_SCHEMA.properties));
      expect(block).not.to.include('x-qhcp');
    });

    it('every key with a flag: the CLI parses the flag into that key, for each role the schema gives it', () => {
      for (const key of Object.keys(CONFIG_SCHEMA.properties) as ConfigKey[]) {
        const meta = optionMeta(key);
        if (!meta.flag) continue;
        for (const role of meta.flag.roles) {
          const s = CONFIG_SCHEMA.properties[key] as { type?: string; enum?: readonly string[] };
          const value = meta.kind === 'ip' ? '127.0.0.9' : meta.kind === 'port' ? '4999' : meta.kind === 'list' ? 'h1:1,h2:2' : s.enum ? s.enum[1]! : s.type === 'integer' ? '7' : s.type === 'number' ? '0.25' : 'text';
          const want = meta.kind === 'list' ? ['h1:1', 'h2:2'] : s.enum || s.type === 'string' || meta.kind === 'ip' || meta.kind === 'path' || meta.kind === 'name' ? value : Number(value);
          const got = parseConfigFlags(role, [flagOf(key), value]) as Record<string, unknown>;
          expect(got, `${key} via ${flagOf(key)} (${role})`).to.deep.equal({ [key]: want });
        }
      }
    });
  });
});
