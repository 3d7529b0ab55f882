/**
 * One source of truth for the rules issue 10 names, checked over the shipped sources (core/,
 * plugins/): one withTimeout, one metric-name rule, one listener-options builder, and no type
 * name meaning two things (`ServerState` was three).
 */
import { expect } from 'chai';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...sources(p));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}
const FILES = [...sources('core'), ...sources('plugins')].map((f) => ({ file: relative(ROOT, join(ROOT, f)), text: readFileSync(join(ROOT, f), 'utf8') }));
const where = (re: RegExp) => FILES.filter((f) => re.test(f.text)).map((f) => f.file);

describe('one source of truth (core/ and plugins/ sources)', () => {
  it('one withTimeout: defined once, in core/util/timeout.ts', () => {
    expect(where(/function withTimeout\b/)).to.deep.equal(['core/util/timeout.ts']);
    // A timer raced against work is what withTimeout is for. core/check/runner.ts (owned by the
    // agent's change) still races its own; listed here so a new copy elsewhere fails.
    expect(where(/Promise\.race\(/)).to.have.members(['core/util/timeout.ts', 'core/check/runner.ts']);
  });

  it('one metric-name rule: the pattern is written once, in core/protocol/messages.ts', () => {
    expect(where(/\[A-Za-z0-9_\.:-\]\{0,127\}/)).to.deep.equal(['core/protocol/messages.ts']);
  });

  it('one listener-options builder: every QUIC listener takes its options from Core.listenerOptions', () => {
    const listeners = where(/Listener\.listen\(/);
    expect(listeners).to.have.members(['core/roles/agent.ts', 'core/roles/query-port.ts']);
    for (const f of listeners) expect(FILES.find((x) => x.file === f)!.text, f).to.match(/Listener\.listen\(\{\s*\.\.\.(this|this\.core|core)\.listenerOptions\(/);
    expect(where(/idleTimeoutMs: c\.idleTimeout \* 1000/)).to.deep.equal(['core/roles/core.ts']);
  });

  it('no ServerState: each state has its own name (HealthState, AdminState, ...)', () => {
    expect(where(/\bServerState\b/)).to.deep.equal([]);
  });
});
