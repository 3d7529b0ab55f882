/**
 * README's layout section names every folder of core/ (so a reader finds where a frame is
 * parsed, a state changes and a check is scheduled), and its health-state table is the one in
 * core/health/states.ts (the transition table itself is docs/operations.md's, checked by
 * test/health-states.test.ts).
 */
import { expect } from 'chai';
import { readdirSync, readFileSync } from 'node:fs';
import { HEALTH_STATES, STATE_MEANING } from '../core/health/states.ts';

const README = readFileSync(new URL('../README.md', import.meta.url), 'utf8');

function section(title: string): string {
  const at = README.indexOf(`\n${title}\n`);
  expect(at, title).to.be.greaterThan(-1);
  const next = README.indexOf('\n## ', at + title.length + 2);
  return README.slice(at, next < 0 ? undefined : next);
}

describe('README.md', () => {
  it('the layout section names every folder and top-level file of core/, and the files a reader is sent to exist', () => {
    const layout = section('## Layout');
    const block = layout.slice(layout.indexOf('```'), layout.indexOf('```', layout.indexOf('```') + 3));
    for (const e of readdirSync(new URL('../core/', import.meta.url), { withFileTypes: true })) {
      const name = e.isDirectory() ? `${e.name}/` : e.name;
      expect(block, `core/${name} in README's layout`).to.match(new RegExp(`^  ${name.replace('.', '\\.')}\\s`, 'm'));
    }
    for (const [, path] of layout.matchAll(/\b(core\/[\w/.-]+\.ts)\b/g)) expect(readdirSync(new URL(`../${path.split('/').slice(0, -1).join('/')}/`, import.meta.url)), path).to.include(path.split('/').at(-1));
  });

  it('has the health-state table exactly as core/health/states.ts says', () => {
    const rows = HEALTH_STATES.map((s) => `| ${s} | ${STATE_MEANING[s].rotation} | ${STATE_MEANING[s].text} |`);
    expect(README).to.include(['| State | Takes picks | Meaning |', '| --- | --- | --- |', ...rows].join('\n'));
  });
});
