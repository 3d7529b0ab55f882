import { expect } from 'chai';
import { createServer, connect, type Server, type Socket, type AddressInfo } from 'node:net';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import tcp from '../../../plugins/check/tcp.ts';
import { ConfigError } from '../../../core/errors.ts';
import { make, runFor, sleep, testContext, validated } from './helpers.ts';

async function listen(server: Server, port = 0): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return (server.address() as AddressInfo).port;
}

/** Whether a plain connect to `port` completes within `ms`; the socket is closed either way. */
function connects(port: number, ms: number, keep: Socket[]): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    keep.push(s);
    const t = setTimeout(() => resolve(false), ms);
    s.once('connect', () => (clearTimeout(t), resolve(true)));
    s.once('error', () => (clearTimeout(t), resolve(false)));
  });
}

describe('check kind: tcp', () => {
  const ctx = testContext(process.cwd());

  it('defaults the host to 127.0.0.1', () => {
    expect(validated(tcp, { port: 80 })).to.deep.equal({ host: '127.0.0.1', port: 80 });
  });

  it('passes when a listener accepts, and always closes its socket', async () => {
    const server = createServer();
    let open = 0;
    let accepted = 0;
    server.on('connection', (s) => {
      open++;
      accepted++;
      s.on('close', () => open--);
    });
    const port = await listen(server);
    try {
      const c = make(tcp, { port }, ctx);
      for (let i = 0; i < 3; i++) expect(await runFor(c, 2000)).to.deep.equal({ status: 'passing', output: `connected to 127.0.0.1:${port}` });
      for (let i = 0; i < 50 && (accepted < 3 || open > 0); i++) await sleep(20);
      expect(accepted).to.equal(3);
      expect(open).to.equal(0);
    } finally {
      server.close();
    }
  });

  it('is critical with the connect error when nothing listens', async () => {
    const server = createServer();
    const port = await listen(server);
    await new Promise<void>((r) => server.close(() => r()));
    expect(await runFor(make(tcp, { port }, ctx), 2000)).to.deep.equal({ status: 'critical', output: `connect ECONNREFUSED 127.0.0.1:${port}` });
  });

  it('connects over IPv6 loopback too', async function () {
    const server = createServer();
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '::1', () => resolve());
      });
    } catch {
      this.skip(); // no IPv6 loopback on this host
    }
    const { port } = server.address() as AddressInfo;
    try {
      expect(await runFor(make(tcp, { host: '::1', port }, ctx), 2000)).to.deep.equal({ status: 'passing', output: `connected to [::1]:${port}` });
    } finally {
      server.close();
    }
  });

  describe('a connect that hangs (a stopped listener with a full accept queue)', () => {
    let child: ChildProcess;
    let port: number;
    const fillers: Socket[] = [];
    before(async function () {
      this.timeout(20_000);
      // A listener with a backlog of 1 in a process we stop: the kernel queues a connection or two, then drops SYNs.
      child = spawn(process.execPath, ['-e', "const s=require('net').createServer();s.listen({port:0,host:'127.0.0.1',backlog:1},()=>console.log(s.address().port))"], { stdio: ['ignore', 'pipe', 'inherit'] });
      const [line] = (await Promise.race([once(child.stdout!, 'data'), sleep(10_000).then(() => [Buffer.from('')])])) as [Buffer];
      port = Number(String(line).trim());
      expect(port).to.be.greaterThan(0);
      process.kill(child.pid!, 'SIGSTOP');
      let hung = false;
      for (let i = 0; i < 8 && !hung; i++) hung = !(await connects(port, 300, fillers));
      if (!hung) this.skip(); // the kernel accepted everything: no way to make a connect hang here
    });
    after(() => {
      for (const s of fillers) s.destroy();
      if (child?.pid !== undefined && child.exitCode === null) {
        process.kill(child.pid, 'SIGKILL'); // ends a stopped process too
      }
    });

    it('is critical "timed out" at the abort', async () => {
      const t0 = Date.now();
      const out = await runFor(make(tcp, { port }, ctx), 300);
      expect(out.status).to.equal('critical');
      expect(out.output).to.match(/^timed out after \d+ ms$/);
      expect(Date.now() - t0).to.be.below(20_000); // returned at the abort (the connect never completes)
    });
  });

  describe('options that cannot work are config errors at creation', () => {
    for (const port of [0, 65536, -1, 1.5]) {
      it(`port ${port}`, () => {
        expect(() => tcp.create({ host: '127.0.0.1', port }, ctx)).to.throw(ConfigError, /port .* is not an integer in 1\.\.65535/);
      });
    }
    it('is rejected by the schema as well', () => {
      expect(() => validated(tcp, { port: 70000 })).to.throw(/must be <= 65535/);
    });
  });
});
