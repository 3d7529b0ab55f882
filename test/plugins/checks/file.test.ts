import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync, unlinkSync, mkdirSync, realpathSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import file from '../../../plugins/check/file.ts';
import { ConfigError } from '../../../core/errors.ts';
import { isClean } from '../../../core/util/sanitize.ts';
import { make, runFor, testContext, validated } from './helpers.ts';
import { waitUntil } from '../../helpers/procs.ts';

describe('check kind: file', () => {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'qhcp-file-check-')));
  const ctx = testContext(dir);
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('fills its defaults from the schema (a maintenance file)', () => {
    expect(validated(file, { path: 'maint' })).to.deep.equal({ path: 'maint', mustExist: false });
  });

  it('is maint while the maintenance file exists (its first line the reason), passing when it is gone', async () => {
    const c = make(file, { path: 'maintenance' }, ctx); // relative to the config directory
    const path = join(dir, 'maintenance');
    expect(await runFor(c, 1000)).to.deep.equal({ status: 'passing', output: 'no maintenance file' });
    writeFileSync(path, 'deploying v2.3 (ticket 42)\nsecond line\n');
    expect(await runFor(c, 1000)).to.deep.equal({ status: 'maint', output: 'deploying v2.3 (ticket 42)' });
    writeFileSync(path, '');
    expect(await runFor(c, 1000)).to.deep.equal({ status: 'maint', output: `maintenance file ${path}` });
    unlinkSync(path);
    expect(await runFor(c, 1000)).to.deep.equal({ status: 'passing', output: 'no maintenance file' });
  });

  it('tells the runner when its flag file appears or goes, and not for other files in the directory', async () => {
    const sub = join(dir, 'watched');
    mkdirSync(sub);
    const c = make(file, { path: 'watched/maint' }, ctx);
    let calls = 0;
    c.watch!(() => calls++);
    try {
      writeFileSync(join(sub, 'other'), 'x');
      await new Promise((r) => setTimeout(r, 200));
      expect(calls, 'another file').to.equal(0);
      writeFileSync(join(sub, 'maint'), 'deploying');
      await waitUntil(() => calls > 0, 5000, 'a call for the flag file');
      const n = calls;
      unlinkSync(join(sub, 'maint'));
      await waitUntil(() => calls > n, 5000, 'a call for its removal');
    } finally {
      await c.close?.();
    }
    const after = calls;
    writeFileSync(join(sub, 'maint'), 'again');
    await new Promise((r) => setTimeout(r, 200));
    expect(calls, 'closed: no more calls').to.equal(after);
  });

  it('escapes control characters in the file and reads only its start', async () => {
    const path = join(dir, 'hostile');
    const c = make(file, { path }, ctx);
    writeFileSync(path, '\u001b]0;pwned\u0007\u001b[2Jcleared');
    const out = await runFor(c, 1000);
    expect(out.status).to.equal('maint');
    expect(isClean(out.output)).to.equal(true);
    expect(out.output).to.equal('\\x1b]0;pwned\\x07\\x1b[2Jcleared');
    writeFileSync(path, 'y'.repeat(5_000_000));
    const big = await runFor(c, 1000);
    expect(big.status).to.equal('maint');
    expect(big.output.length).to.be.at.most(201);
    unlinkSync(path);
  });

  it('counts a directory at the path as raised', async () => {
    const path = join(dir, 'flagdir');
    mkdirSync(path);
    expect(await runFor(make(file, { path }, ctx), 1000)).to.deep.equal({ status: 'maint', output: `maintenance file ${path}` });
  });

  it('with mustExist: a ready file, passing while present and critical while missing', async () => {
    const path = join(dir, 'ready');
    const c = make(file, { path: 'ready', mustExist: true }, ctx);
    expect(await runFor(c, 1000)).to.deep.equal({ status: 'critical', output: `ready file ${path} missing` });
    writeFileSync(path, '');
    expect(await runFor(c, 1000)).to.deep.equal({ status: 'passing', output: `ready file ${path} present` });
    unlinkSync(path);
    expect((await runFor(c, 1000)).status).to.equal('critical');
  });

  describe('options that cannot work are config errors at creation', () => {
    it('a path whose directory does not exist', () => {
      expect(() => file.create({ path: 'no/such/dir/maint', mustExist: false }, ctx)).to.throw(ConfigError, /directory .*no\/such\/dir.* does not exist/);
    });
    it('an empty path', () => {
      expect(() => file.create({ path: '', mustExist: false }, ctx)).to.throw(ConfigError, /non-empty/);
    });
  });
});
