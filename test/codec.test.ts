/**
 * The wire codec against the spec: every test vector in docs/protocol.md decodes and re-encodes
 * byte for byte, every invalid vector fails with its error, and the streaming decoder copes
 * with any chunking. Property tests throw random and truncated bytes at it.
 */
import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import fc from 'fast-check';
import { encodeFrame, decodeFrame, FrameDecoder, HEADER_BYTES, DEFAULT_MAX_FRAME_BYTES, hasDuplicateKey } from '../core/protocol/codec.ts';
import { HEALTH_STATES } from '../core/health/states.ts';
import { MESSAGE_NAMES, MESSAGE_TYPES, FIELD_LIMITS, VERDICTS, ADMIN_STATES, type Bodies, type Message, type MessageName, type MessageOf } from '../core/protocol/messages.ts';
import { ProtocolError, WIRE_ERRORS, type WireErrorName } from '../core/errors.ts';

const SPEC = readFileSync(new URL('../docs/protocol.md', import.meta.url), 'utf8');

interface ValidVector {
  name: string;
  message?: Message;
  messages?: Message[];
  hex: string;
  chunks?: string[];
}
interface InvalidVector {
  name: string;
  hex: string;
  error: WireErrorName;
}

/** The lines of the ```vectors block of the spec, parsed. */
function specVectors(doc: string): { valid: ValidVector[]; invalid: InvalidVector[] } {
  const block = /^```vectors\r?\n([\s\S]*?)^```/m.exec(doc);
  if (!block) throw new Error('docs/protocol.md has no ```vectors block');
  const valid: ValidVector[] = [];
  const invalid: InvalidVector[] = [];
  for (const line of block[1]!.split(/\r?\n/)) {
    if (!line.trim()) continue;
    const v = JSON.parse(line) as ValidVector & Partial<InvalidVector>;
    if (v.error !== undefined) invalid.push(v as InvalidVector);
    else valid.push(v);
  }
  return { valid, invalid };
}

const VECTORS = specVectors(SPEC);

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const bytes = (h: string): Buffer => Buffer.from(h, 'hex');

/** Runs `f` and returns the ProtocolError it throws; fails when it throws nothing or something else. */
function protocolErrorOf(f: () => unknown): ProtocolError {
  try {
    f();
  } catch (e) {
    expect(e, String(e)).to.be.instanceOf(ProtocolError);
    return e as ProtocolError;
  }
  expect.fail('expected a ProtocolError, nothing was thrown');
}

/** Feeds `chunks` to a fresh decoder and ends the stream; returns the messages. */
function decodeChunks(chunks: Uint8Array[], max = DEFAULT_MAX_FRAME_BYTES): Message[] {
  const d = new FrameDecoder(max);
  const out: Message[] = [];
  for (const c of chunks) out.push(...d.push(c));
  d.end();
  return out;
}

/** `buf` cut into one-byte chunks. */
const byteByByte = (buf: Uint8Array): Uint8Array[] => Array.from(buf, (_, i) => buf.subarray(i, i + 1));

/** One sample of every message type; the mapped type makes the compiler insist on all of them. */
const SAMPLES: { [K in MessageName]: MessageOf<K> } = {
  HELLO: { type: 'HELLO', body: { versions: [1, 2], role: 'checker', node: 'lb-1', token: 'a.b.c' } },
  ACK: { type: 'ACK', body: { version: 1, node: 'web-1', role: 'agent', metrics: ['cpu.load1', 'mem.used_pct'] } },
  HEALTH_REQUEST: { type: 'HEALTH_REQUEST', body: { seq: 0 } },
  HEALTH_RESPONSE: {
    type: 'HEALTH_RESPONSE',
    body: {
      seq: 0,
      metrics: { 'cpu.load1': 1.25, disk_free: 1e12, temp: -4.5 },
      ageMs: 999,
      verdict: 'DEGRADED',
      reason: 'web: http: 503 ✗',
      admin: 'READY',
      weight: 256,
      services: { web: { verdict: 'DEGRADED', reason: 'http: 503', since: 1_700_000_000_000 }, 'api.v2': { verdict: 'SERVING', since: 0 } },
    },
  },
  CONFIG_UPDATE: { type: 'CONFIG_UPDATE', body: { seq: 1, metrics: [], reportIntervalMs: 100 } },
  CONFIG_ACK: { type: 'CONFIG_ACK', body: { seq: 1, metrics: ['cpu.load1'], reportIntervalMs: 0 } },
  ERROR: { type: 'ERROR', body: { code: 65535, reason: '' } },
  TERMINATE: { type: 'TERMINATE', body: { reason: 'bye ✓' } },
  TERMINATE_ACK: { type: 'TERMINATE_ACK', body: {} },
  DRAIN: { type: 'DRAIN', body: { graceMs: 0 } },
  PICK: { type: 'PICK', body: { seq: 2 } },
  PICK_RESPONSE: { type: 'PICK_RESPONSE', body: { seq: 2, server: '[::1]:4243', reason: 'least-loaded' } },
  STATUS: { type: 'STATUS', body: { seq: 3 } },
  STATUS_RESPONSE: {
    type: 'STATUS_RESPONSE',
    body: {
      seq: 3,
      node: 'lb-1',
      servers: [
        { address: 'a:4243', state: 'DOWN', since: 1, failures: 3, successes: 0, latencyMs: null, metrics: {}, ageMs: null, reportedAt: null, lastError: 'RESPONSE_TIMEOUT: slow', checks: 9 },
        { address: 'b:4243', state: 'UNKNOWN', since: 2, failures: 0, successes: 0, latencyMs: 0, metrics: { x: 0 }, ageMs: 0, reportedAt: 0, lastError: null, checks: 0 },
      ],
    },
  },
  HEALTH_REPORT: { type: 'HEALTH_REPORT', body: { metrics: {}, ageMs: 86_400_000, verdict: 'NOT_SERVING', admin: 'MAINT', weight: 0 } },
  WATCH: { type: 'WATCH', body: { seq: 4, service: 'web', address: '10.0.*:4243/*' } },
  WATCH_UPDATE: {
    type: 'WATCH_UPDATE',
    body: {
      seq: 4,
      run: '9f86d081884c7d65',
      version: 12,
      kind: 'delta',
      from: 11,
      members: [{ address: 'a:4243/web', service: 'web', state: 'DOWN', since: 5, verdict: 'NOT_SERVING', agentAdmin: 'READY', adminState: 'MAINT', weight: 0, metrics: { loadScore: 1 }, reason: 'http: 503 ✗' }],
      removed: ['b:4243/web'],
    },
  },
};
const SAMPLE_LIST = Object.values(SAMPLES) as Message[];

describe('codec', () => {
  describe('JSON details (docs/protocol.md, "Encoding")', () => {
    const frame = (type: number, json: string | Buffer) => {
      const b = Buffer.isBuffer(json) ? json : Buffer.from(json);
      const h = Buffer.from([1, type, 0, 0, 0, 0]);
      h.writeUInt32BE(b.length, 2);
      return Buffer.concat([h, b]);
    };
    it('an integer field takes any JSON number with an integer value: 1.0 and 1e0 are 1', () => {
      expect(decodeFrame(frame(3, '{"seq":1.0}'))).to.deep.equal({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
      expect(decodeFrame(frame(3, '{"seq":1e0}'))).to.deep.equal({ type: 'HEALTH_REQUEST', body: { seq: 1 } });
      expect(protocolErrorOf(() => decodeFrame(frame(3, '{"seq":1.5}'))).kind).to.equal('INVALID_MESSAGE');
    });
    it('refuses a byte order mark and duplicate keys (at any depth, escaped or not) with MALFORMED_FRAME', () => {
      expect(protocolErrorOf(() => decodeFrame(frame(3, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"seq":1}')])))).kind).to.equal('MALFORMED_FRAME');
      expect(protocolErrorOf(() => decodeFrame(frame(4, '{"seq":1,"metrics":{"a":1,"a":2},"ageMs":0,"verdict":"SERVING","admin":"READY","weight":1}'))).kind).to.equal('MALFORMED_FRAME');
      expect(hasDuplicateKey('{"a":{"b":1},"c":{"b":2}}'), 'same key in sibling objects').to.equal(false);
      expect(hasDuplicateKey('{"a":["x","x"],"b":"a"}'), 'repeated values, a value equal to a key').to.equal(false);
      expect(hasDuplicateKey('{"k\\"":1,"k\\"":2}')).to.equal(true);
      expect(hasDuplicateKey('{"a" : 1, "\\u0061" : 2}')).to.equal(true);
      expect(hasDuplicateKey('{"x":{"y":{"z":1,"z":1}}}')).to.equal(true);
      // The count of colons outside strings against the parse's properties: colons, quotes and
      // backslashes inside strings, objects inside arrays, __proto__ as a plain key.
      expect(hasDuplicateKey(JSON.stringify({ 'a:b': 'c:d', e: '\\:' })), 'colons inside strings').to.equal(false);
      expect(hasDuplicateKey(JSON.stringify({ 'a\\': 1, b: '\\":x' })), 'escaped backslashes before a quote').to.equal(false);
      expect(hasDuplicateKey('[{"a":1},{"a":1},[{"b":[{"c":1,"c":2}]}]]'), 'inside arrays').to.equal(true);
      expect(hasDuplicateKey('[{"a":1},{"a":1},[{"b":[{"c":1,"d":2}]}]]')).to.equal(false);
      expect(hasDuplicateKey('{"__proto__":1,"__proto__":2}')).to.equal(true);
      expect(hasDuplicateKey('{"__proto__":{"a":1},"b":{}}')).to.equal(false);
      // Nesting as deep as a frame allows costs no stack.
      const deep = `${'['.repeat(30_000)}{"a":1,"a":2}${']'.repeat(30_000)}`;
      expect(hasDuplicateKey(deep)).to.equal(true);
      // Against the obvious rule (a set of keys per object, the scan this check replaced) on random texts.
      let seed = 7;
      const rnd = (n: number) => Math.floor(((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * n);
      const keys = ['a', 'b', ':', '"', '\\', 'a:b'];
      const gen = (depth: number): string => {
        const r = rnd(depth > 3 ? 3 : 5);
        if (r === 0) return String(rnd(100));
        if (r === 1) return JSON.stringify(keys[rnd(keys.length)]);
        if (r === 2) return 'null';
        if (r === 3) return `[${Array.from({ length: rnd(3) }, () => gen(depth + 1)).join(',')}]`;
        return `{${Array.from({ length: rnd(4) }, () => `${JSON.stringify(keys[rnd(keys.length)])}:${gen(depth + 1)}`).join(',')}}`;
      };
      const bySets = (src: string): boolean => {
        const stack: Array<Set<string> | null> = [];
        for (let i = 0; i < src.length; i++) {
          const c = src[i];
          if (c === '"') {
            let j = i + 1;
            while (src[j] !== '"') j += src[j] === '\\' ? 2 : 1;
            const top = stack[stack.length - 1];
            if (top && src.slice(j + 1).trimStart().startsWith(':')) {
              const k = JSON.parse(src.slice(i, j + 1)) as string;
              if (top.has(k)) return true;
              top.add(k);
            }
            i = j;
          } else if (c === '{') stack.push(new Set());
          else if (c === '[') stack.push(null);
          else if (c === '}' || c === ']') stack.pop();
        }
        return false;
      };
      let dups = 0;
      for (let i = 0; i < 2000; i++) {
        const text = gen(0);
        const expected = bySets(text);
        dups += expected ? 1 : 0;
        expect(hasDuplicateKey(text), text).to.equal(expected);
      }
      expect(dups, 'the random texts include duplicates').to.be.greaterThan(50);
    });
  });

  describe('spec test vectors (docs/protocol.md)', () => {
    it('has a valid vector for every message type, a split one and a packed one', () => {
      const types = new Set(VECTORS.valid.flatMap((v) => (v.message ? [v.message.type] : [])));
      expect([...types].sort()).to.deep.equal([...MESSAGE_NAMES].sort());
      expect(VECTORS.valid.some((v) => v.chunks && v.chunks.length > 1)).to.equal(true);
      expect(VECTORS.valid.some((v) => v.messages && v.messages.length > 1)).to.equal(true);
    });

    it('has invalid vectors for every kind of framing failure', () => {
      for (const v of VECTORS.invalid) expect(WIRE_ERRORS, v.name).to.have.property(v.error);
      const kinds = new Set(VECTORS.invalid.map((v) => v.error));
      for (const k of ['UNSUPPORTED_VERSION', 'UNKNOWN_MESSAGE_TYPE', 'FRAME_TOO_LARGE', 'TRUNCATED_FRAME', 'MALFORMED_FRAME', 'INVALID_MESSAGE'] as const) {
        expect(kinds.has(k), k).to.equal(true);
      }
      const names = VECTORS.invalid.map((v) => v.name).join('\n');
      for (const what of [/version/, /unknown type/, /length/, /ends inside/, /not JSON/, /JSON array/, /schema/]) expect(names).to.match(what);
    });

    it("every vector's type byte is the message's type byte", () => {
      for (const v of VECTORS.valid) {
        const msgs = v.messages ?? [v.message!];
        let at = 0;
        const buf = bytes(v.hex);
        for (const m of msgs) {
          expect(buf[at], v.name).to.equal(1);
          expect(buf[at + 1], v.name).to.equal(MESSAGE_TYPES[m.type]);
          at += HEADER_BYTES + buf.readUInt32BE(at + 2);
        }
        expect(at, v.name).to.equal(buf.length);
      }
    });

    it("the spec's message table lists every type byte", () => {
      const rows = new Map<string, number>();
      for (const m of SPEC.matchAll(/^\| `0x([0-9a-f]{2})` \| ([A-Z_]+) \|/gm)) rows.set(m[2]!, parseInt(m[1]!, 16));
      expect(Object.fromEntries(rows)).to.deep.equal(MESSAGE_TYPES);
    });

    for (const v of VECTORS.valid) {
      it(`decodes and re-encodes: ${v.name}`, () => {
        const buf = bytes(v.hex);
        if (v.messages) {
          expect(decodeChunks([buf])).to.deep.equal(v.messages);
          expect(decodeChunks(byteByByte(buf))).to.deep.equal(v.messages);
          expect(v.messages.map((m) => hex(encodeFrame(m))).join('')).to.equal(v.hex);
          return;
        }
        expect(decodeFrame(buf)).to.deep.equal(v.message);
        expect(hex(encodeFrame(v.message!))).to.equal(v.hex);
        expect(hex(encodeFrame(decodeFrame(buf)))).to.equal(v.hex);
        if (v.chunks) {
          expect(v.chunks.join('')).to.equal(v.hex);
          expect(decodeChunks(v.chunks.map(bytes))).to.deep.equal([v.message]);
        }
      });
    }

    for (const v of VECTORS.invalid) {
      it(`rejects with ${v.error}: ${v.name}`, () => {
        const buf = bytes(v.hex);
        expect(protocolErrorOf(() => decodeChunks([buf])).kind).to.equal(v.error);
        expect(protocolErrorOf(() => decodeChunks(byteByByte(buf))).kind).to.equal(v.error);
        const err = protocolErrorOf(() => decodeChunks([buf]));
        expect(err.wire).to.equal(WIRE_ERRORS[v.error].wire);
        expect(err.code).to.equal(`QHCP_ERR_${v.error}`);
      });
    }
  });

  describe('encodeFrame / decodeFrame', () => {
    for (const m of SAMPLE_LIST) {
      it(`round-trips ${m.type}`, () => {
        const frame = encodeFrame(m);
        expect(frame[0]).to.equal(1);
        expect(frame[1]).to.equal(MESSAGE_TYPES[m.type]);
        expect(frame.readUInt32BE(2)).to.equal(frame.length - HEADER_BYTES);
        expect(JSON.parse(frame.subarray(HEADER_BYTES).toString('utf8'))).to.deep.equal(m.body);
        expect(decodeFrame(frame)).to.deep.equal(m);
      });
    }

    it('counts the payload length in UTF-8 bytes, not characters', () => {
      const frame = encodeFrame({ type: 'ERROR', body: { code: 100, reason: 'é😀' } });
      expect(frame.readUInt32BE(2)).to.equal(Buffer.byteLength('{"code":100,"reason":"é😀"}'));
    });

    it('decodeFrame wants exactly one frame', () => {
      const two = Buffer.concat([encodeFrame(SAMPLES.STATUS), encodeFrame(SAMPLES.PICK)]);
      expect(protocolErrorOf(() => decodeFrame(two)).kind).to.equal('MALFORMED_FRAME');
      expect(protocolErrorOf(() => decodeFrame(new Uint8Array(0))).kind).to.equal('MALFORMED_FRAME');
      expect(protocolErrorOf(() => decodeFrame(encodeFrame(SAMPLES.STATUS).subarray(0, 10))).kind).to.equal('TRUNCATED_FRAME');
    });

    it('accepts a payload of exactly the maximum and refuses one byte more', () => {
      const max = 1024;
      const fill = (n: number) => ({ type: 'TERMINATE', body: { reason: 'x'.repeat(n) } }) as Message;
      const overhead = encodeFrame(fill(0)).length - HEADER_BYTES;
      const exact = encodeFrame(fill(max - overhead));
      expect(exact.length - HEADER_BYTES).to.equal(max);
      expect(protocolErrorOf(() => decodeFrame(exact, max - 1)).kind).to.equal('FRAME_TOO_LARGE');
      // The schema caps reason at 1024 characters, so the exact-size frame is still a valid one.
      expect(decodeFrame(exact, max)).to.deep.equal(fill(max - overhead));
    });

    it('accepts any whitespace and field order in the payload', () => {
      const json = Buffer.from(' {\n "reportIntervalMs" : 0 ,\t"seq":7 } ');
      const header = Buffer.from([1, MESSAGE_TYPES.CONFIG_UPDATE, 0, 0, 0, json.length]);
      expect(decodeFrame(Buffer.concat([header, json]))).to.deep.equal({ type: 'CONFIG_UPDATE', body: { reportIntervalMs: 0, seq: 7 } });
    });
  });

  describe('FrameDecoder', () => {
    it('decodes a frame split at every possible byte boundary', () => {
      for (const m of SAMPLE_LIST) {
        const frame = encodeFrame(m);
        for (let i = 0; i <= frame.length; i++) {
          const d = new FrameDecoder();
          const first = d.push(frame.subarray(0, i));
          expect(first, `${m.type} cut at ${i}`).to.have.length(i === frame.length ? 1 : 0);
          if (i < frame.length) expect(d.bufferedBytes, `${m.type} cut at ${i}`).to.equal(i);
          const second = d.push(frame.subarray(i));
          expect([...first, ...second], `${m.type} cut at ${i}`).to.deep.equal([m]);
          expect(d.bufferedBytes).to.equal(0);
          d.end();
        }
      }
    });

    it('decodes a frame cut in three at every pair of boundaries', () => {
      const m = SAMPLES.HEALTH_RESPONSE;
      const frame = encodeFrame(m);
      // O(n^2) cuts: compared as JSON text (chai's deep equal on each would cost seconds), with
      // chai's diff only for a cut that differs.
      const want = JSON.stringify([m]);
      for (let i = 0; i <= frame.length; i++) {
        for (let j = i; j <= frame.length; j++) {
          const got = decodeChunks([frame.subarray(0, i), frame.subarray(i, j), frame.subarray(j)]);
          if (JSON.stringify(got) !== want) expect(got, `${i},${j}`).to.deep.equal([m]);
        }
      }
    });

    it('decodes many frames packed in one chunk, in order', () => {
      const msgs: Message[] = [];
      for (let i = 0; i < 1000; i++) msgs.push(i % 3 === 0 ? { type: 'HEALTH_REQUEST', body: { seq: i } } : SAMPLE_LIST[i % SAMPLE_LIST.length]!);
      const all = Buffer.concat(msgs.map((m) => encodeFrame(m)));
      expect(decodeChunks([all])).to.deep.equal(msgs);
    });

    it('decodes frames packed across chunk boundaries (a chunk ends mid-frame and starts the next)', () => {
      const msgs = [...SAMPLE_LIST, ...SAMPLE_LIST];
      const all = Buffer.concat(msgs.map((m) => encodeFrame(m)));
      for (const size of [1, 2, 5, 6, 7, 13, 64, 1000]) {
        const chunks: Uint8Array[] = [];
        for (let at = 0; at < all.length; at += size) chunks.push(all.subarray(at, at + size));
        expect(decodeChunks(chunks), `chunk size ${size}`).to.deep.equal(msgs);
      }
    });

    it('decodes a 60 KiB frame trickled one byte at a time', () => {
      const server = SAMPLES.STATUS_RESPONSE.body.servers[0]!;
      const servers = [];
      let frame = encodeFrame({ type: 'STATUS_RESPONSE', body: { seq: 1, node: 'lb', servers: [] } });
      while (frame.length < 60 * 1024) {
        servers.push({ ...server, address: `10.0.${servers.length >> 8}.${servers.length & 255}:4243` });
        frame = encodeFrame({ type: 'STATUS_RESPONSE', body: { seq: 1, node: 'lb', servers } });
      }
      expect(frame.length).to.be.within(60 * 1024, DEFAULT_MAX_FRAME_BYTES);
      const d = new FrameDecoder();
      for (let i = 0; i < frame.length - 1; i++) {
        if (d.push(frame.subarray(i, i + 1)).length !== 0) expect.fail(`a message came out after ${i + 1} bytes`);
      }
      expect(d.bufferedBytes).to.equal(frame.length - 1);
      const out = d.push(frame.subarray(frame.length - 1));
      expect(out).to.deep.equal([{ type: 'STATUS_RESPONSE', body: { seq: 1, node: 'lb', servers } }]);
      d.end();
    });

    it('keeps no view of what it is given: one buffer reused for every read (as the transport does) decodes the same', () => {
      const frames = [
        encodeFrame({ type: 'HEALTH_REQUEST', body: { seq: 1 } }),
        encodeFrame({ type: 'HEALTH_REPORT', body: { metrics: { cpu: 12.5 }, ageMs: 3, verdict: 'SERVING', admin: 'READY', weight: 100 } }),
        encodeFrame({ type: 'HEALTH_REQUEST', body: { seq: 2 } }),
      ];
      const stream = Buffer.concat(frames);
      for (const size of [1, 2, 5, 7, frames[0]!.length + 3, stream.length]) {
        const d = new FrameDecoder();
        const reused = Buffer.alloc(size);
        const out = [];
        for (let i = 0; i < stream.length; i += size) {
          const n = stream.copy(reused, 0, i, i + size);
          out.push(...d.push(reused.subarray(0, n)));
          reused.fill(0xff); // the next read overwrites it
        }
        expect(out.map((m) => m.type), `reads of ${size} bytes`).to.deep.equal(['HEALTH_REQUEST', 'HEALTH_REPORT', 'HEALTH_REQUEST']);
        expect(out[2]!.body, `reads of ${size} bytes`).to.deep.equal({ seq: 2 });
        d.end();
      }
    });

    it('fails on the header of a too-large frame before any payload arrives', () => {
      for (const max of [DEFAULT_MAX_FRAME_BYTES, 1024]) {
        const header = Buffer.from([1, MESSAGE_TYPES.HEALTH_RESPONSE, 0, 0, 0, 0]);
        header.writeUInt32BE(max + 1, 2);
        const d = new FrameDecoder(max);
        for (let i = 0; i < HEADER_BYTES - 1; i++) expect(d.push(header.subarray(i, i + 1))).to.deep.equal([]);
        const err = protocolErrorOf(() => d.push(header.subarray(HEADER_BYTES - 1)));
        expect(err.kind).to.equal('FRAME_TOO_LARGE');
        expect(err.wire).to.equal(101);
        // A header declaring exactly the maximum is fine and waits for its payload.
        header.writeUInt32BE(max, 2);
        const ok = new FrameDecoder(max);
        expect(ok.push(header)).to.deep.equal([]);
        expect(protocolErrorOf(() => ok.end()).kind).to.equal('TRUNCATED_FRAME');
      }
    });

    it('checks the version and type on the header alone', () => {
      expect(protocolErrorOf(() => new FrameDecoder().push(Buffer.from([2, 3, 0, 0, 0, 9]))).kind).to.equal('UNSUPPORTED_VERSION');
      expect(protocolErrorOf(() => new FrameDecoder().push(Buffer.from([1, 0x42, 0, 0, 0, 9]))).kind).to.equal('UNKNOWN_MESSAGE_TYPE');
    });

    it('stays failed after the first error', () => {
      const d = new FrameDecoder();
      const first = protocolErrorOf(() => d.push(Buffer.from([9, 9, 9, 9, 9, 9])));
      expect(protocolErrorOf(() => d.push(encodeFrame(SAMPLES.STATUS)))).to.equal(first);
      expect(protocolErrorOf(() => d.end())).to.equal(first);
      expect(d.bufferedBytes).to.equal(0);
    });

    it('ends cleanly on a frame boundary, and on an empty stream', () => {
      expect(decodeChunks([])).to.deep.equal([]);
      expect(decodeChunks([new Uint8Array(0), encodeFrame(SAMPLES.PICK), new Uint8Array(0)])).to.deep.equal([SAMPLES.PICK]);
    });

    it('reports an empty payload as MALFORMED_FRAME with a reason of its own', () => {
      for (const chunks of [[Buffer.from([1, 9, 0, 0, 0, 0])], [Buffer.from([1, 9, 0]), Buffer.from([0, 0, 0])]]) {
        const err = protocolErrorOf(() => decodeChunks(chunks));
        expect(err.kind).to.equal('MALFORMED_FRAME');
        expect(err.message).to.match(/TERMINATE_ACK payload/);
      }
    });

    it('does not keep state across decoders', () => {
      const a = new FrameDecoder();
      const b = new FrameDecoder();
      const frame = encodeFrame(SAMPLES.STATUS);
      a.push(frame.subarray(0, 3));
      expect(b.push(frame)).to.deep.equal([SAMPLES.STATUS]);
      expect(a.push(frame.subarray(3))).to.deep.equal([SAMPLES.STATUS]);
    });
  });

  describe('properties', () => {
    /** Fails unless `e` is a ProtocolError of the codec's own making (not a wrapped crash). */
    const expectCleanProtocolError = (e: unknown): void => {
      if (!(e instanceof ProtocolError)) throw new Error(`not a ProtocolError: ${String(e)}`);
      if (!(e.kind in WIRE_ERRORS)) throw new Error(`unknown kind ${e.kind}`);
      if (/^(TypeError|RangeError|ReferenceError|Error)\b/.test(e.message)) throw new Error(`wrapped internal error: ${e.message}`);
    };

    /** Splits `buf` at the given cut points (sorted, deduplicated, clamped). */
    const cut = (buf: Uint8Array, points: number[]): Uint8Array[] => {
      const at = [...new Set(points.map((p) => p % (buf.length + 1)))].sort((a, b) => a - b);
      const out: Uint8Array[] = [];
      let prev = 0;
      for (const p of at) {
        out.push(buf.subarray(prev, p));
        prev = p;
      }
      out.push(buf.subarray(prev));
      return out;
    };

    const seq = fc.integer({ min: 0, max: 0xffffffff });
    const text = (maxLength: number, minLength = 0) => fc.string({ unit: 'binary', minLength, maxLength });
    const name = text(FIELD_LIMITS.maxNameLength, 1);
    const reason = text(FIELD_LIMITS.maxReasonLength);
    const ms = fc.integer({ min: 0, max: 86_400_000 });
    const finite = (min?: number) =>
      fc.double({ noNaN: true, noDefaultInfinity: true, ...(min !== undefined ? { min } : {}) }).map((x) => (Object.is(x, -0) ? 0 : x));
    const metricName = fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_.:-]{0,24}$/);
    const metrics = fc.dictionary(metricName, finite(), { maxKeys: 12, noNullPrototype: true });
    const metricList = fc.uniqueArray(metricName, { maxLength: 12 });
    const nullable = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: null });
    const verdict = fc.constantFrom(...VERDICTS);
    const verdictReason = text(FIELD_LIMITS.maxVerdictReasonLength);
    const services = fc.dictionary(
      fc.stringMatching(/^[A-Za-z0-9_.-]{1,64}$/),
      fc.record({ verdict, reason: verdictReason, since: fc.integer({ min: 0, max: 253_402_300_799_999 }) }, { requiredKeys: ['verdict', 'since'] }),
      { maxKeys: 5, noNullPrototype: true },
    );
    const health = {
      verdict,
      reason: verdictReason,
      admin: fc.constantFrom(...ADMIN_STATES),
      weight: fc.integer({ min: 0, max: FIELD_LIMITS.maxWeight }),
      services,
    };
    const HEALTH_REQUIRED = ['verdict', 'admin', 'weight'] as const;
    const epoch = fc.integer({ min: 0, max: 253_402_300_799_999 });
    const counter = fc.maxSafeNat();
    const server = fc.record({
      address: text(300, 1),
      state: fc.constantFrom(...HEALTH_STATES),
      since: epoch,
      failures: counter,
      successes: counter,
      latencyMs: nullable(fc.double({ noNaN: true, min: 0, max: 86_400_000 }).map((x) => (Object.is(x, -0) ? 0 : x))),
      metrics,
      ageMs: nullable(ms),
      reportedAt: nullable(epoch),
      lastError: nullable(reason),
      checks: counter,
    });

    const member = fc.record(
      {
        address: text(300, 1),
        service: fc.stringMatching(/^[A-Za-z0-9_.-]{1,64}$/),
        state: fc.constantFrom(...HEALTH_STATES),
        since: epoch,
        verdict: fc.constantFrom('SERVING' as const, 'DEGRADED' as const, 'NOT_SERVING' as const),
        agentAdmin: fc.constantFrom('READY' as const, 'DRAIN' as const, 'MAINT' as const),
        adminState: fc.constantFrom('READY' as const, 'DRAIN' as const, 'MAINT' as const),
        weight: fc.integer({ min: 0, max: 2560 }),
        metrics,
        reason: nullable(reason),
      },
      { requiredKeys: ['address', 'state', 'since', 'verdict', 'agentAdmin', 'adminState', 'weight', 'metrics', 'reason'] },
    );

    /** Schema-valid bodies of every message type. */
    const BODIES: { [K in MessageName]: fc.Arbitrary<Bodies[K]> } = {
      HELLO: fc.record(
        {
          versions: fc.uniqueArray(fc.integer({ min: 1, max: 255 }), { minLength: 1, maxLength: 16 }),
          role: fc.constantFrom('checker', 'query'),
          node: name,
          token: text(300, 1),
        },
        { requiredKeys: ['versions', 'role', 'node'] },
      ),
      ACK: fc.record({ version: fc.integer({ min: 1, max: 255 }), node: name, role: fc.constantFrom('agent', 'loadbalancer'), metrics: metricList }),
      HEALTH_REQUEST: fc.record({ seq }),
      HEALTH_RESPONSE: fc.record({ seq, metrics, ageMs: ms, ...health }, { requiredKeys: ['seq', 'metrics', 'ageMs', ...HEALTH_REQUIRED] }),
      CONFIG_UPDATE: fc.record(
        { seq, metrics: metricList, reportIntervalMs: fc.oneof(fc.constant(0), fc.integer({ min: 100, max: 3_600_000 })) },
        { requiredKeys: ['seq'] },
      ),
      CONFIG_ACK: fc.record({ seq, metrics: metricList, reportIntervalMs: ms }),
      ERROR: fc.record({ code: fc.integer({ min: 0, max: 65535 }), reason }),
      TERMINATE: fc.record({ reason }, { requiredKeys: [] }),
      TERMINATE_ACK: fc.constant({} as Record<string, never>),
      DRAIN: fc.record({ reason, graceMs: ms }, { requiredKeys: ['graceMs'] }),
      PICK: fc.record({ seq, key: text(256) }, { requiredKeys: ['seq'] }),
      PICK_RESPONSE: fc.record({ seq, server: nullable(text(300)), reason }, { requiredKeys: ['seq', 'server'] }),
      STATUS: fc.record({ seq }),
      STATUS_RESPONSE: fc.record({ seq, node: name, servers: fc.array(server, { maxLength: 4 }) }),
      HEALTH_REPORT: fc.record({ metrics, ageMs: ms, ...health }, { requiredKeys: ['metrics', 'ageMs', ...HEALTH_REQUIRED] }),
      WATCH: fc.record({ seq, service: fc.stringMatching(/^[A-Za-z0-9_.-]{1,64}$/), address: text(300, 1) }, { requiredKeys: ['seq'] }),
      WATCH_UPDATE: fc.oneof(
        fc.record(
          { seq, run: fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/), version: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), kind: fc.constant('full' as const), members: fc.array(member, { maxLength: 4 }), more: fc.boolean(), resync: fc.boolean() },
          { requiredKeys: ['seq', 'run', 'version', 'kind', 'members'] },
        ),
        fc.record(
          { seq, run: fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/), version: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), kind: fc.constant('delta' as const), from: counter, members: fc.array(member, { maxLength: 4 }), removed: fc.array(text(300, 1), { maxLength: 4 }) },
          { requiredKeys: ['seq', 'run', 'version', 'kind', 'from', 'members'] },
        ),
      ),
    };
    const messageOf = <K extends MessageName>(type: K): fc.Arbitrary<Message> => BODIES[type].map((body) => ({ type, body }) as Message);
    const anyMessage = fc.oneof(...MESSAGE_NAMES.map((n) => messageOf(n)));

    for (const type of MESSAGE_NAMES) {
      it(`round-trips random valid ${type} bodies, whatever the chunking`, () => {
        fc.assert(
          fc.property(messageOf(type), fc.array(fc.nat(), { maxLength: 4 }), (m, points) => {
            const frame = encodeFrame(m);
            const back = decodeFrame(frame);
            expect(back).to.deep.equal(m);
            expect(hex(encodeFrame(back))).to.equal(hex(frame));
            expect(decodeChunks(cut(frame, points))).to.deep.equal([m]);
          }),
          { numRuns: 100 },
        );
      });
    }

    it('random bytes give messages or a ProtocolError, never any other exception', () => {
      // Mostly plausible headers (so the payload paths are reached), some pure noise.
      const header = fc.tuple(
        fc.constantFrom(1, 1, 1, 1, 0, 2, 255),
        fc.integer({ min: 0, max: 17 }),
        fc.oneof(fc.integer({ min: 0, max: 80 }), fc.integer({ min: 0, max: 0xffffffff })),
      );
      const payload = fc.oneof(
        fc.uint8Array({ maxLength: 80 }),
        fc.json().map((j) => new Uint8Array(Buffer.from(j))),
        fc.dictionary(fc.string(), fc.jsonValue()).map((o) => new Uint8Array(Buffer.from(JSON.stringify(o)))),
      );
      const plausible = fc.tuple(header, payload, fc.boolean()).map(([[v, t, len], p, honest]) => {
        const b = Buffer.alloc(HEADER_BYTES + p.length);
        b[0] = v;
        b[1] = t;
        b.writeUInt32BE(honest ? p.length : len, 2);
        b.set(p, HEADER_BYTES);
        return new Uint8Array(b);
      });
      const stream = fc.array(fc.oneof(plausible, fc.uint8Array({ maxLength: 40 })), { minLength: 1, maxLength: 4 }).map((parts) => new Uint8Array(Buffer.concat(parts)));
      fc.assert(
        fc.property(stream, fc.array(fc.nat(), { maxLength: 5 }), (buf, points) => {
          const d = new FrameDecoder();
          try {
            for (const c of cut(buf, points)) for (const m of d.push(c)) expect(MESSAGE_NAMES).to.include(m.type);
            d.end();
          } catch (e) {
            expectCleanProtocolError(e);
          }
        }),
        { numRuns: 500 },
      );
    });

    it('a truncated valid frame gives no message, and end() throws TRUNCATED_FRAME', () => {
      fc.assert(
        fc.property(anyMessage, fc.nat(), fc.array(fc.nat(), { maxLength: 3 }), (m, at, points) => {
          const frame = encodeFrame(m);
          const part = frame.subarray(0, 1 + (at % (frame.length - 1)));
          const d = new FrameDecoder();
          for (const c of cut(part, points)) expect(d.push(c)).to.deep.equal([]);
          expect(d.bufferedBytes).to.be.greaterThan(0);
          expect(protocolErrorOf(() => d.end()).kind).to.equal('TRUNCATED_FRAME');
        }),
        { numRuns: 300 },
      );
    });

    it('a declared length above the maximum gives FRAME_TOO_LARGE on the header', () => {
      fc.assert(
        fc.property(fc.integer({ min: 0, max: 200_000 }), fc.nat(), fc.constantFrom(...MESSAGE_NAMES), fc.uint8Array({ maxLength: 20 }), (max, over, type, tail) => {
          const length = Math.min(0xffffffff, max + 1 + over);
          const header = Buffer.from([1, MESSAGE_TYPES[type], 0, 0, 0, 0]);
          header.writeUInt32BE(length, 2);
          const err = protocolErrorOf(() => new FrameDecoder(max).push(Buffer.concat([header, tail])));
          expect(err.kind).to.equal('FRAME_TOO_LARGE');
        }),
        { numRuns: 300 },
      );
    });
  });
});
