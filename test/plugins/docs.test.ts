/**
 * Keeps docs/plugins-builtin.md honest: every built-in plugin has its section, and each options
 * table is exactly what the plugin's schema renders. Also checks the registry against the modules.
 */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { BUILTIN_PLUGINS, validateOptions, type PluginConstructor } from '../../core/plugin/loader.ts';
import { isPluginDefinition, type PluginDefinition } from '../../core/plugin/define.ts';
import type { ObjectSchema } from '../../core/config/schema-types.ts';
import { BUILTIN_CHECK_KINDS, loadBuiltinCheckKind } from '../../core/check/builtin.ts';
import { BUILTIN_DOC, allSchemas, begin, optionRows, regenerate } from '../../scripts/gen-plugin-docs.ts';
import { testContext, validated } from './checks/helpers.ts';

/** The least options each built-in needs to construct. */
const MINIMAL: Record<string, Record<string, unknown>> = {
  jwt: { secretEnv: 'QHCP_UNUSED' },
  webhook: { url: 'http://127.0.0.1:9/' },
  exec: { command: 'true' },
  haproxy: { socket: '/run/haproxy/admin.sock' },
  nginx: { file: '/etc/nginx/qhcp-upstream.conf', upstream: 'app' },
  'envoy-eds': { file: '/etc/envoy/eds.json', cluster: 'app' },
  caddy: { id: 'qhcp_app' },
};

/** The least options each built-in check kind needs to be created. */
const MINIMAL_CHECK: Record<string, Record<string, unknown>> = {
  http: { url: 'http://127.0.0.1:9/' },
  tcp: { port: 9 },
  exec: { command: ['true'] },
  grpc: { address: '127.0.0.1:9' },
  file: { path: 'maintenance' },
};

describe('docs/plugins-builtin.md', () => {
  const doc = readFileSync(BUILTIN_DOC, 'utf8');

  it('has a section and an options table for every built-in plugin', () => {
    for (const name of Object.keys(BUILTIN_PLUGINS)) {
      expect(doc, name).to.match(new RegExp(`^#{2,3} ${name}$`, 'm'));
      expect(doc, name).to.include(begin(name));
    }
  });

  it('has a section and an options table for every built-in check kind', () => {
    for (const type of Object.keys(BUILTIN_CHECK_KINDS)) {
      expect(doc, type).to.match(new RegExp(`^### ${type} check$`, 'm'));
      expect(doc, type).to.include(begin(`check-${type}`));
    }
  });

  it('has every options table exactly as the schemas render it (node --import tsx scripts/gen-plugin-docs.ts)', async () => {
    expect(await regenerate(doc)).to.equal(doc);
  });

  it('documents every option of every schema, each with a description', async () => {
    for (const [name, schema] of Object.entries(await allSchemas())) {
      for (const row of optionRows(schema)) expect(doc, `${name} ${row.name}`).to.include(`| \`${row.name}\` |`);
    }
  });

  it('registry names match the plugins the modules construct', async () => {
    for (const [name, path] of Object.entries(BUILTIN_PLUGINS)) {
      const ctor = ((await import(new URL(`../../core/plugin/${path}.ts`, import.meta.url).href)) as { default: PluginConstructor | PluginDefinition<ObjectSchema> }).default;
      const opts = validateOptions(ctor, MINIMAL[name] ?? {}, name);
      // Every built-in is written with definePlugin, as a third-party plugin is.
      expect(isPluginDefinition(ctor), `${name} is a definePlugin() definition`).to.equal(true);
      const p = isPluginDefinition(ctor) ? ctor.create(opts as never) : new ctor(opts);
      expect(p.name).to.equal(name);
      expect(p.family).to.be.oneOf(['metrics', 'auth', 'balancer', 'alert', 'sync', 'proxy']);
    }
  });

  it('check kind registry names match the kinds the modules define, and each creates from its minimal options', async () => {
    for (const type of Object.keys(BUILTIN_CHECK_KINDS)) {
      const kind = (await loadBuiltinCheckKind(type))!;
      expect(kind.type).to.equal(type);
      const check = kind.create(validated(kind, MINIMAL_CHECK[type]!) as never, testContext(process.cwd()));
      expect(check.run).to.be.a('function');
      await check.close?.();
    }
    expect(await loadBuiltinCheckKind('toString')).to.equal(undefined);
  });
});

describe('docs/plugins.md and docs/examples import from the package only', () => {
  /** Every module specifier in `text` (import ... from '...', import('...')). */
  const specifiers = (text: string) => [...text.matchAll(/\bfrom\s+'([^']+)'|\bimport\(\s*'([^']+)'\s*\)/g)].map((m) => m[1] ?? m[2]!);
  const allowed = (s: string) => s === 'qhcp' || s === 'qhcp/client' || s === 'qhcp/testing' || s.startsWith('node:') || /^\.\/[\w.-]+\.ts$/.test(s);

  it("names 'qhcp', 'qhcp/client', 'qhcp/testing', node: modules and the examples themselves, nothing inside the package", async () => {
    const { readdirSync } = await import('node:fs');
    const files = ['docs/plugins.md', 'docs/client.md', ...readdirSync(new URL('../../docs/examples/', import.meta.url)).map((f) => `docs/examples/${f}`)];
    for (const f of files) {
      const found = specifiers(readFileSync(new URL(`../../${f}`, import.meta.url), 'utf8'));
      expect(found.filter((s) => !allowed(s)), f).to.deep.equal([]);
      if (f === 'docs/plugins.md') expect(found).to.include('qhcp');
    }
  });
});
