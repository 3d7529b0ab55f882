/**
 * The status page in real Chromium (Debian's, driven by playwright-core) against real
 * processes: three agents (one named with markup, shown as text) and a load balancer with its
 * HTTP listener and admin token. Three UP rows; an agent killed turns its row DOWN without a
 * reload; the Drain button turns a row DRAINING. Screenshots go to test-artifacts/.
 */
import { expect } from 'chai';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { startServer, startLoadBalancer, stopAll, ROOT, type QhcpProcess } from '../helpers/procs.ts';
import { httpUrl } from './helpers.ts';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = join(ROOT, 'test-artifacts');
const TOKEN = 'browser-test-token-0123456789';
/** An agent node name with markup: the page must show it as text, never build elements from it. */
const EVIL = '<img src=x id=pwned onerror=alert(1)>';

describe('status page in Chromium (real processes)', function () {
  this.timeout(180_000);
  let browser: BrowserContext | undefined;
  let page: Page;
  let dir: string;
  let servers: Array<{ proc: QhcpProcess; address: string }>;
  let url: string;
  const dialogs: string[] = [];
  const errors: string[] = [];

  before(async function () {
    if (!existsSync(CHROMIUM)) {
      if (process.env.CI) throw new Error("chromium is missing: .ci/run installs Debian's chromium package");
      this.skip();
    }
    dir = mkdtempSync(join(tmpdir(), 'qhcp-page-'));
    writeFileSync(join(dir, 'token'), `${TOKEN}\n`);
    servers = [await startServer({ args: ['--node', EVIL] }), await startServer(), await startServer()];
    const lb = await startLoadBalancer(
      servers.map((s) => s.address),
      { interval: 0.5, fail: 2, args: ['--http', '127.0.0.1:0', '--http-token-file', join(dir, 'token'), '--status', 'none'] },
    );
    url = await httpUrl(lb.proc);
    // A fresh profile directory per run (playwright passes it as --user-data-dir).
    browser = await chromium.launchPersistentContext(join(dir, 'profile'), {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      timeout: 60_000,
      viewport: { width: 1500, height: 600 },
    });
    page = browser.pages()[0] ?? (await browser.newPage());
    page.on('dialog', (d) => {
      dialogs.push(d.message());
      void d.dismiss();
    });
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(url, { timeout: 30_000 });
    mkdirSync(ARTIFACTS, { recursive: true });
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await stopAll();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const row = (address: string) => page.locator(`tr[data-address="${address}"]`);

  it('shows three UP backends, with peer strings as text', async () => {
    for (const s of servers) await row(s.address).locator('.state', { hasText: /^UP$/ }).waitFor({ timeout: 30_000 });
    expect(await page.locator('tbody tr').count()).to.equal(3);
    // The node name with markup is shown literally; no element was made from it, no script ran.
    await row(servers[0]!.address).locator('.sub', { hasText: EVIL }).waitFor({ timeout: 10_000 });
    expect(await page.locator('#pwned').count()).to.equal(0);
    expect(dialogs).to.deep.equal([]);
    expect(await page.locator('#live').textContent()).to.equal('live');
    await page.screenshot({ path: join(ARTIFACTS, 'status-page-up.png'), fullPage: true });
  });

  it('an agent killed turns its row DOWN without a reload', async () => {
    const victim = servers[2]!;
    await page.evaluate(() => ((window as unknown as { marker: number }).marker = 42));
    victim.proc.signal('SIGKILL');
    await row(victim.address).locator('.state', { hasText: /^DOWN$/ }).waitFor({ timeout: 30_000 });
    // Same document: the marker set before survives (no navigation happened).
    expect(await page.evaluate(() => (window as unknown as { marker?: number }).marker)).to.equal(42);
    for (const s of servers.slice(0, 2)) expect(await row(s.address).getAttribute('data-state')).to.equal('UP');
    await page.locator('#transitions li', { hasText: `${victim.address} UP → DOWN` }).waitFor({ timeout: 10_000 });
  });

  it('the Drain button turns a row DRAINING (admin API with the token)', async () => {
    const target = servers[1]!;
    await page.locator('#token').fill(TOKEN);
    await row(target.address).locator('button[data-action="drain"]').click();
    await row(target.address).locator('.state', { hasText: /^DRAINING$/ }).waitFor({ timeout: 20_000 });
    expect(await page.locator('#adminmsg').textContent()).to.match(/admin state DRAIN/);
    expect(await row(servers[0]!.address).getAttribute('data-state')).to.equal('UP');
    await page.screenshot({ path: join(ARTIFACTS, 'status-page-drain.png'), fullPage: true });
    expect(errors).to.deep.equal([]);
  });
});
