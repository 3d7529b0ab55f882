import { expect } from 'chai';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, chmodSync, existsSync, realpathSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import exec from '../../../plugins/check/exec.ts';
import { ConfigError } from '../../../core/errors.ts';
import { isClean } from '../../../core/util/sanitize.ts';
import { MAX_REASON } from '../../../plugins/check/common.ts';
import { isAlive, make, runFor, sleep, testContext, validated } from './helpers.ts';

/** Waits (bounded) for a file a command writes, and returns its content. */
async function readWhenThere(path: string, ms = 5000): Promise<string> {
  for (let i = 0; i < ms / 20; i++) {
    if (existsSync(path)) {
      const text = readFileSync(path, 'utf8');
      if (text.endsWith('\n')) return text;
    }
    await sleep(20);
  }
  throw new Error(`${path} never appeared`);
}

/** Waits (bounded) until none of `pids` is alive; returns the ones still alive. */
async function gone(pids: number[], ms = 3000): Promise<number[]> {
  let alive = pids.filter(isAlive);
  for (let i = 0; i < ms / 20 && alive.length > 0; i++) {
    await sleep(20);
    alive = alive.filter(isAlive);
  }
  return alive;
}

describe('check kind: exec', () => {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'qhcp-exec-check-')));
  const ctx = testContext(dir);
  const leftovers: number[] = [];
  after(() => {
    for (const pid of leftovers) if (isAlive(pid)) process.kill(pid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('fills its defaults from the schema', () => {
    expect(validated(exec, { command: ['true'] })).to.deep.equal({ command: ['true'], shell: false, env: {}, maxOutputBytes: 4096 });
  });

  it('maps exit 0 / 1 / 2 to passing / warning / critical, the first line of output as the reason', async () => {
    const run = (code: number) => runFor(make(exec, { command: ['sh', '-c', `echo "line one $0"; echo second; exit ${code}`, String(code)] }, ctx), 5000);
    expect(await run(0)).to.deep.equal({ status: 'passing', output: 'line one 0' });
    expect(await run(1)).to.deep.equal({ status: 'warning', output: 'line one 1' });
    expect(await run(2)).to.deep.equal({ status: 'critical', output: 'line one 2' });
    expect((await run(77)).status).to.equal('critical');
  });

  it('says "exit N" when there is no output, and reads stderr too', async () => {
    expect(await runFor(make(exec, { command: ['sh', '-c', 'exit 3'] }, ctx), 5000)).to.deep.equal({ status: 'critical', output: 'exit 3' });
    expect(await runFor(make(exec, { command: ['sh', '-c', 'echo disk full >&2; exit 2'] }, ctx), 5000)).to.deep.equal({ status: 'critical', output: 'disk full' });
  });

  it('runs a shell string with shell: true, in cwd, with env', async () => {
    mkdirSync(join(dir, 'sub'), { recursive: true });
    const out = await runFor(make(exec, { command: 'echo "$GREETING from $(pwd)"; exit 1', shell: true, cwd: 'sub', env: { GREETING: 'hello' } }, ctx), 5000);
    expect(out).to.deep.equal({ status: 'warning', output: `hello from ${join(dir, 'sub')}` });
  });

  it("defaults cwd to the config file's directory and runs a script relative to it", async () => {
    writeFileSync(join(dir, 'check.sh'), '#!/bin/sh\necho "ok in $(pwd)"\n');
    chmodSync(join(dir, 'check.sh'), 0o755);
    expect(await runFor(make(exec, { command: ['./check.sh'] }, ctx), 5000)).to.deep.equal({ status: 'passing', output: `ok in ${dir}` });
  });

  it('reports a death by signal', async () => {
    expect(await runFor(make(exec, { command: ['sh', '-c', 'kill -TERM $$'] }, ctx), 5000)).to.deep.equal({ status: 'critical', output: 'killed by SIGTERM' });
  });

  it('escapes escape sequences and control characters in the output', async () => {
    const out = await runFor(make(exec, { command: ['printf', '\\033[31mRED\\033[0m \\007bell\\rback\\n'] }, ctx), 5000);
    expect(out.status).to.equal('passing');
    expect(isClean(out.output)).to.equal(true);
    expect(out.output).to.equal('\\x1b[31mRED\\x1b[0m \\x07bell\\x0dback');
  });

  it('reads output bounded: a flood of output neither blocks the command nor grows the reason', async () => {
    // 8 MiB on one line: far beyond the pipe buffer and maxOutputBytes.
    const out = await runFor(make(exec, { command: ['sh', '-c', 'head -c 8388608 /dev/zero | tr "\\0" x; exit 1'] }, ctx), 20_000);
    expect(out.status).to.equal('warning');
    expect(out.output.length).to.be.at.most(MAX_REASON + 1);
    expect(out.output.startsWith('xxxx')).to.equal(true);
  });

  it('kills the whole process group at the timeout: the command and the child it spawned', async () => {
    const pidFile = join(dir, 'hang.pids');
    const c = make(exec, { command: `sleep 60 & echo "$$ $!" > ${pidFile}; echo waiting; wait`, shell: true }, ctx);
    const t0 = Date.now();
    const running = runFor(c, 1000);
    const [shellPid, childPid] = (await readWhenThere(pidFile)).trim().split(' ').map(Number) as [number, number];
    leftovers.push(shellPid, childPid);
    expect(isAlive(shellPid) && isAlive(childPid)).to.equal(true);
    const out = await running;
    expect(out.status).to.equal('critical');
    expect(out.output).to.match(/^timed out after \d+ ms$/);
    expect(Date.now() - t0).to.be.below(30_000); // returned at the abort, not when sleep 60 ends
    expect(await gone([shellPid, childPid])).to.deep.equal([]);
  });

  it('kills what the command leaves running in its group when it exits', async () => {
    const pidFile = join(dir, 'left.pids');
    const c = make(exec, { command: `sleep 60 > /dev/null 2>&1 & echo "$!" > ${pidFile}; echo done`, shell: true }, ctx);
    expect(await runFor(c, 5000)).to.deep.equal({ status: 'passing', output: 'done' });
    const childPid = Number((await readWhenThere(pidFile)).trim());
    leftovers.push(childPid);
    expect(await gone([childPid])).to.deep.equal([]);
  });

  it('does not wait for a leftover child holding its output pipe open', async () => {
    const t0 = Date.now();
    const out = await runFor(make(exec, { command: 'sleep 60 & echo quick', shell: true }, ctx), 25_000);
    expect(out).to.deep.equal({ status: 'passing', output: 'quick' }); // not "timed out": it did not wait for sleep 60
    expect(Date.now() - t0).to.be.below(25_000);
  });

  describe('options that cannot work are config errors at creation', () => {
    const bad: Array<[string, Record<string, unknown>, RegExp]> = [
      ['a program not in PATH', { command: ['qhcp-no-such-command-xyz'] }, /"qhcp-no-such-command-xyz" not found in PATH/],
      ['a path that is not an executable file', { command: ['./missing.sh'] }, /"\.\/missing\.sh" is not an executable file/],
      ['a cwd that does not exist', { command: ['true'], cwd: 'no/such/dir' }, /cwd: directory .*no\/such\/dir.* does not exist/],
      ['a command string with spaces and no shell', { command: 'echo hi' }, /has spaces: give an argv array, or set shell: true/],
      ['shell: true with an argv array', { command: ['echo', 'hi'], shell: true }, /with shell: true, command is one string/],
      ['a PATH in env that lacks the program', { command: ['sh'], env: { PATH: '/nonexistent' } }, /"sh" not found in PATH/],
    ];
    for (const [what, options, message] of bad) {
      it(what, () => {
        expect(() => exec.create(options as never, ctx)).to.throw(ConfigError, message);
      });
    }
  });
});
