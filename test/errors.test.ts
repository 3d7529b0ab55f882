/**
 * Error codes: every wire code is in the spec's table with its number and name, every local
 * code is documented, numbers are unique and stable, and the error classes carry them.
 */
import { readFileSync, existsSync } from 'node:fs';
import { expect } from 'chai';
import { WIRE_ERRORS, LOCAL_ERRORS, wireErrorName, ProtocolError, PeerError, LocalError, QhcpError, type WireErrorName, type LocalErrorCode } from '../core/errors.ts';
import { extractSection, renderWireErrorTable, renderLocalErrorTable, beginMarker } from '../scripts/gen-protocol-tables.ts';

const read = (rel: string): string | undefined => {
  const url = new URL(rel, import.meta.url);
  return existsSync(url) ? readFileSync(url, 'utf8') : undefined;
};
const PROTOCOL = read('../docs/protocol.md')!;
const OPERATIONS = read('../docs/operations.md');

const WIRE_NAMES = Object.keys(WIRE_ERRORS) as WireErrorName[];
const LOCAL_CODES = Object.keys(LOCAL_ERRORS) as LocalErrorCode[];

/** The `| code | QHCP_ERR_NAME | meaning |` rows of the spec's error table. */
function specWireTable(): Map<string, { wire: number; description: string }> {
  const rows = new Map<string, { wire: number; description: string }>();
  for (const line of extractSection(PROTOCOL, 'wire-errors').split(/\r?\n/)) {
    const m = /^\|\s*(\d+)\s*\|\s*`?QHCP_ERR_([A-Z0-9_]+)`?\s*\|\s*(.*?)\s*\|\s*$/.exec(line);
    if (!m) continue;
    if (rows.has(m[2]!)) throw new Error(`${m[2]} is listed twice`);
    rows.set(m[2]!, { wire: Number(m[1]), description: m[3]!.replace(/\\\|/g, '|') });
  }
  return rows;
}

describe('errors', () => {
  describe('WIRE_ERRORS', () => {
    it('has unique wire numbers', () => {
      const numbers = WIRE_NAMES.map((n) => WIRE_ERRORS[n].wire);
      expect(new Set(numbers).size).to.equal(numbers.length);
    });

    it('uses numbers an ERROR frame and a QUIC close code can carry, never 0 (a clean close)', () => {
      for (const n of WIRE_NAMES) {
        const w = WIRE_ERRORS[n].wire;
        expect(Number.isInteger(w), n).to.equal(true);
        expect(w, n).to.be.within(1, 65535);
        expect(WIRE_ERRORS[n].description, n).to.be.a('string').and.not.equal('');
      }
    });

    it('keeps the numbers the protocol depends on', () => {
      expect(WIRE_ERRORS.MALFORMED_FRAME.wire).to.equal(100);
      expect(WIRE_ERRORS.FRAME_TOO_LARGE.wire).to.equal(101);
      expect(WIRE_ERRORS.UNSUPPORTED_VERSION.wire).to.equal(102);
      expect(WIRE_ERRORS.UNKNOWN_MESSAGE_TYPE.wire).to.equal(103);
      expect(WIRE_ERRORS.INVALID_MESSAGE.wire).to.equal(104);
      expect(WIRE_ERRORS.UNEXPECTED_MESSAGE.wire).to.equal(105);
      expect(WIRE_ERRORS.HELLO_TIMEOUT.wire).to.equal(106);
      expect(WIRE_ERRORS.RESPONSE_TIMEOUT.wire).to.equal(107);
      expect(WIRE_ERRORS.EXTRA_STREAM.wire).to.equal(109);
      expect(WIRE_ERRORS.TRUNCATED_FRAME.wire).to.equal(110);
      const auth = WIRE_NAMES.filter((n) => n.startsWith('AUTH_')).map((n) => WIRE_ERRORS[n].wire);
      expect(auth.sort()).to.deep.equal([200, 201, 202, 203, 204, 205, 206, 207]);
    });

    it('wireErrorName round-trips every code, and knows no others', () => {
      for (const n of WIRE_NAMES) expect(wireErrorName(WIRE_ERRORS[n].wire)).to.equal(n);
      const known = new Set<number>(WIRE_NAMES.map((n) => WIRE_ERRORS[n].wire));
      for (let w = 0; w <= 1000; w++) if (!known.has(w)) expect(wireErrorName(w), String(w)).to.equal(undefined);
      expect(wireErrorName(65535)).to.equal(undefined);
      expect(wireErrorName(-1)).to.equal(undefined);
      expect(wireErrorName(100.5)).to.equal(undefined);
    });
  });

  describe('docs/protocol.md error table', () => {
    it('lists every wire error with the same number and name, and nothing else', () => {
      const rows = specWireTable();
      expect([...rows.keys()]).to.deep.equal(WIRE_NAMES);
      for (const n of WIRE_NAMES) {
        expect(rows.get(n)!.wire, n).to.equal(WIRE_ERRORS[n].wire);
        expect(rows.get(n)!.description, n).to.equal(WIRE_ERRORS[n].description);
      }
    });

    it('is exactly the generated table', () => {
      expect(extractSection(PROTOCOL, 'wire-errors')).to.equal(renderWireErrorTable());
    });

    it('names the error of every invalid test vector by a wire error name', () => {
      for (const m of PROTOCOL.matchAll(/"error":"([A-Z_]+)"/g)) expect(WIRE_ERRORS, m[1]).to.have.property(m[1]!);
    });
  });

  describe('LOCAL_ERRORS', () => {
    it('are documented in docs/operations.md or docs/protocol.md', () => {
      const docs = `${OPERATIONS ?? ''}\n${PROTOCOL}`;
      for (const code of LOCAL_CODES) expect(docs, code).to.match(new RegExp(`\\b${code}\\b`));
    });

    it('match the generated table where docs/operations.md carries one', function () {
      if (!OPERATIONS || !OPERATIONS.includes(beginMarker('local-errors'))) return this.skip();
      expect(extractSection(OPERATIONS, 'local-errors')).to.equal(renderLocalErrorTable());
    });

    it('are QHCP_ERR_ codes that no wire error also uses', () => {
      const wireCodes = new Set(WIRE_NAMES.map((n) => `QHCP_ERR_${n}`));
      for (const code of LOCAL_CODES) {
        expect(code).to.match(/^QHCP_ERR_[A-Z_]+$/);
        expect(wireCodes.has(code), code).to.equal(false);
        expect(LOCAL_ERRORS[code], code).to.be.a('string').and.not.equal('');
      }
    });
  });

  describe('error classes', () => {
    it('ProtocolError carries kind, wire number and code', () => {
      for (const n of WIRE_NAMES) {
        const e = new ProtocolError(n, 'why');
        expect(e).to.be.instanceOf(QhcpError).and.instanceOf(Error);
        expect(e.kind).to.equal(n);
        expect(e.wire).to.equal(WIRE_ERRORS[n].wire);
        expect(e.code).to.equal(`QHCP_ERR_${n}`);
        expect(e.message).to.equal('why');
      }
    });

    it('PeerError names known codes and keeps unknown ones by number', () => {
      const known = new PeerError(202, 'token expired');
      expect(known.kind).to.equal('AUTH_EXPIRED');
      expect(known.code).to.equal('QHCP_ERR_AUTH_EXPIRED');
      expect(known.toString()).to.equal('AUTH_EXPIRED: token expired');
      const unknown = new PeerError(4242, 'future');
      expect(unknown.kind).to.equal(undefined);
      expect(unknown.code).to.equal('QHCP_ERR_PEER_UNKNOWN');
      expect(unknown.wire).to.equal(4242);
      expect(unknown.toString()).to.equal('ERROR_4242: future');
    });

    it('LocalError carries its code and is not a ProtocolError', () => {
      for (const code of LOCAL_CODES) {
        const e = new LocalError(code, 'x');
        expect(e.code).to.equal(code);
        expect(e).to.be.instanceOf(QhcpError).and.not.instanceOf(ProtocolError);
      }
    });
  });
});
