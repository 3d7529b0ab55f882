/**
 * The message validators compiled at build time (scripts/gen-validators.mjs, ajv standalone code,
 * used by the installed package so that `qhcp status` never loads ajv) judge exactly as the ones
 * compiled at run time: every message of the spec's vectors, and a mutation of each that breaks
 * it, gets the same verdict and the same error text from both.
 */
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv, type ValidateFunction } from 'ajv';
import { MESSAGE_SCHEMAS, VALIDATOR_OPTIONS, ajvErrorText, type Message } from '../core/protocol/messages.ts';
// @ts-expect-error a plain JavaScript build script without declarations
import { generateValidators } from '../scripts/gen-validators.mjs';

const SPEC = readFileSync(new URL('../docs/protocol.md', import.meta.url), 'utf8');

function specMessages(): Message[] {
  const block = /^```vectors\r?\n([\s\S]*?)^```/m.exec(SPEC)![1]!;
  const out: Message[] = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line.trim()) continue;
    const v = JSON.parse(line) as { message?: Message; messages?: Message[] };
    out.push(...(v.message ? [v.message] : []), ...(v.messages ?? []));
  }
  return out;
}

/** Bodies that must fail: an unknown field, and each field turned into something of another type. */
function mutations(body: Record<string, unknown>): unknown[] {
  const out: unknown[] = [{ ...body, notAField: 1 }, null, [], 'x'];
  for (const k of Object.keys(body)) out.push({ ...body, [k]: typeof body[k] === 'string' ? 12 : 'x' });
  return out;
}

describe('precompiled message validators (scripts/gen-validators.mjs)', function () {
  this.timeout(60_000);
  let dir: string;
  let types: string[];
  const req = createRequire(import.meta.url);
  before(async () => {
    // Inside the checkout: the generated code requires ajv's runtime helpers, as dist/ does.
    const cache = fileURLToPath(new URL('../node_modules/.cache/', import.meta.url));
    mkdirSync(cache, { recursive: true });
    dir = mkdtempSync(join(cache, 'qhcp-validators-'));
    types = (await generateValidators(dir, fileURLToPath(new URL('../core/protocol/messages.ts', import.meta.url)))) as string[];
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('one module per message type, each carrying the schema it was compiled from', () => {
    expect([...types].sort()).to.deep.equal(Object.keys(MESSAGE_SCHEMAS).sort());
    for (const t of types) expect((req(join(dir, `${t}.cjs`)) as { schema: string }).schema).to.equal(JSON.stringify(MESSAGE_SCHEMAS[t as keyof typeof MESSAGE_SCHEMAS]));
  });

  it('agree with run-time validators on every spec message and on broken copies of them', () => {
    const ajv = new Ajv(VALIDATOR_OPTIONS);
    let judged = 0;
    let refused = 0;
    const messages = specMessages();
    expect(messages.length).to.be.greaterThan(10);
    for (const m of messages) {
      const runtime = ajv.getSchema(m.type) ?? (ajv.addSchema(MESSAGE_SCHEMAS[m.type], m.type), ajv.getSchema(m.type)!);
      const built = (req(join(dir, `${m.type}.cjs`)) as { default: ValidateFunction }).default;
      for (const body of [m.body, ...mutations(m.body as Record<string, unknown>)]) {
        const a = runtime(body);
        const b = built(body);
        expect(b, `${m.type} ${JSON.stringify(body).slice(0, 120)}`).to.equal(a);
        if (!a) {
          refused++;
          expect(ajvErrorText(built.errors)).to.equal(ajvErrorText(runtime.errors));
        }
        judged++;
      }
    }
    expect(refused).to.be.greaterThan(judged / 2);
  });
});
