import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { definePlugin } from '../../core/plugin/define.ts';
import { resolvePlugins } from '../../core/plugin/loader.ts';
import { ConfigError } from '../../core/errors.ts';
import { applyPlugin, build, fakeCore, transition, alert } from '../../core/testing/index.ts';
import webhook from '../../plugins/alert/webhook.ts';
import exec from '../../plugins/alert/exec.ts';
import leastLoaded from '../../plugins/balancer/least-loaded.ts';
import haproxy from '../../plugins/sync/haproxy.ts';

const problemsOf = (p: Promise<unknown>) =>
  p.then(
    () => [] as string[],
    (e: unknown) => {
      if (!(e instanceof ConfigError)) throw e;
      return e.problems;
    },
  );

describe('definePlugin: built-ins and plugin bodies', () => {
  it('refuses a definition with both apply and setup, or neither, saying so', () => {
    const schema = { type: 'object', properties: {} } as const;
    expect(() => definePlugin({ name: 'x', schema } as never)).to.throw(TypeError, /give exactly one of `apply\(core, options\)` and `setup\(options\)`/);
    expect(() => definePlugin({ name: 'x', schema, apply() {}, setup: () => ({ apply() {} }) })).to.throw(TypeError, /exactly one/);
    expect(() => definePlugin({ name: 'x', apply() {} } as never)).to.throw(TypeError, /`schema` is required/);
  });

  it('a setup() body keeps its own methods and gets the name, family and roles', async () => {
    class Body {
      calls = 0;
      constructor(readonly factor: number) {}
      apply(): void {
        this.calls++;
      }
      twice(n: number): number {
        return n * this.factor;
      }
    }
    const def = definePlugin({
      name: 'body',
      family: 'other',
      roles: ['server'],
      schema: { type: 'object', additionalProperties: false, properties: { factor: { type: 'integer', default: 2, description: 'x' } } },
      setup: (o) => new Body(o.factor),
    });
    const p = build(def);
    expect(p).to.be.instanceOf(Body);
    expect([p.name, p.family, p.roles]).to.deep.equal(['body', 'other', ['server']]);
    expect(p.twice(5)).to.equal(10); // the schema's default, filled in once
    await applyPlugin(fakeCore('server'), def, { factor: 3 }).then((q) => expect(q.twice(5)).to.equal(15));
  });

  it('a built-in with a wrong option type is a type error in a config and a start-up error', async () => {
    // @ts-expect-error timeoutMs is a number in webhook's schema
    const wrongType = webhook({ url: 'http://127.0.0.1:9/', timeoutMs: 'slow' });
    // @ts-expect-error url is required by webhook's schema
    const missing = webhook({});
    // @ts-expect-error least-loaded has no option `share` (it is maxShare)
    leastLoaded({ share: 0.5 });
    expect(await problemsOf(resolvePlugins({ plugins: [wrongType], defaults: false }, 'loadbalancer'))).to.deep.equal(['plugins[0].options.timeoutMs: must be integer (got "slow")']);
    expect(await problemsOf(resolvePlugins({ plugins: [missing], defaults: false }, 'loadbalancer'))).to.deep.equal(["plugins[0].options: must have required property 'url'"]);
    // By name, the same schema judges the same options.
    expect(await problemsOf(resolvePlugins({ plugins: [['haproxy', { socket: '/x', resyncIntervalMs: -1 }]], defaults: false }, 'loadbalancer'))).to.have.length(1);
    expect(haproxy.pluginName).to.equal('haproxy');
  });

  it("relative paths in a built-in's options resolve from the config file's directory (exec alert cwd)", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qhcp-define-'));
    try {
      const core = fakeCore('loadbalancer', { configFile: join(dir, 'qhcp.config.ts') });
      const p = await applyPlugin(core, exec, { command: '/bin/sh', args: ['-c', 'test "$(pwd)" = "$1"', 'sh', dir], cwd: '.', minIntervalMs: 0 });
      await alert(core, transition('10.0.0.1:4243'));
      expect(await p.drain(5000)).to.equal(true);
      expect(p.results.map((r) => r.code)).to.deep.equal([0]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('auth plugins: a key file readable by others is a warning naming the file and its mode', () => {
  it('mtls (load balancer certFile/keyFile)', async () => {
    const { makeCerts } = await import('../helpers/certs.ts');
    const { chmodSync } = await import('node:fs');
    const { default: mtls } = await import('../../plugins/auth/mtls.ts');
    const certs = makeCerts();
    try {
      const core = fakeCore('loadbalancer');
      await applyPlugin(core, mtls, { certFile: certs.cert, keyFile: certs.key });
      expect(core.logged(/readable by other users/)).to.deep.equal([]);
      chmodSync(certs.key, 0o644);
      const open = fakeCore('loadbalancer');
      await applyPlugin(open, mtls, { certFile: certs.cert, keyFile: certs.key });
      const [w] = open.logged(/readable by other users/);
      expect(w).to.include({ msg: 'mtls: key file is readable by other users (mode 644); chmod 600 it', file: certs.key });
    } finally {
      certs.remove();
    }
  });
});
