/**
 * The wire codec: length-prefixed frames on the control stream (docs/protocol.md, "Framing").
 *
 *   0        1        2                                  6
 *   +--------+--------+--------+--------+--------+--------+---------------------+
 *   |version |  type  |        payload length (u32, big-endian)  | payload (UTF-8 JSON object)
 *   +--------+--------+--------+--------+--------+--------+---------------------+
 */
import { ProtocolError } from '../errors.ts';
import { PROTOCOL_VERSION, messageName, validateBody, MESSAGE_TYPES, type Message } from './messages.ts';

export const HEADER_BYTES = 6;
/** Default maximum payload length in bytes; configurable per endpoint (`maxFrameBytes`). */
export const DEFAULT_MAX_FRAME_BYTES = 64 * 1024;

// ignoreBOM: a byte order mark is kept, so JSON.parse refuses it (MALFORMED_FRAME, as the spec says).
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Whether a valid JSON text has an object with the same key twice (after unescaping: "a" and
 * "\u0061" are the same key). JSON.parse silently keeps the last one; QHCP refuses them. Every
 * colon outside a string in valid JSON separates one key from its value, and the parsed value
 * keeps one property per distinct key: the text has a duplicate exactly when it has more colons
 * than its parse has properties. (No string or Set per key: this runs on every frame.)
 */
export function hasDuplicateKey(text: string, value: unknown = JSON.parse(text)): boolean {
  return pairsIn(text) !== propertiesIn(value);
}

/** Colons outside strings in a valid JSON text. */
function pairsIn(text: string): number {
  let pairs = 0;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      for (i++; i < n; i++) {
        const d = text.charCodeAt(i);
        if (d === 0x5c) i++;
        else if (d === 0x22) break;
      }
    } else if (c === 0x3a) pairs++;
  }
  return pairs;
}

/** Properties of every object in a parsed JSON value (iterative: the nesting depth is the peer's). */
function propertiesIn(value: unknown): number {
  let count = 0;
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (v === null || typeof v !== 'object') continue;
    if (Array.isArray(v)) {
      for (const e of v) if (e !== null && typeof e === 'object') stack.push(e);
      continue;
    }
    const values = Object.values(v);
    count += values.length;
    for (let i = 0; i < values.length; i++) {
      const e = values[i];
      if (e !== null && typeof e === 'object') stack.push(e);
    }
  }
  return count;
}

/** Encodes one message as one frame. */
export function encodeFrame(msg: Message, version: number = PROTOCOL_VERSION): Buffer {
  const json = Buffer.from(JSON.stringify(msg.body), 'utf8');
  const frame = Buffer.allocUnsafe(HEADER_BYTES + json.length);
  frame[0] = version;
  frame[1] = MESSAGE_TYPES[msg.type];
  frame.writeUInt32BE(json.length, 2);
  json.copy(frame, HEADER_BYTES);
  return frame;
}

/** Checks a header; returns the payload length. @throws ProtocolError */
function readHeader(header: Uint8Array, maxFrameBytes: number): { type: number; length: number } {
  if (header[0] !== PROTOCOL_VERSION) {
    throw new ProtocolError('UNSUPPORTED_VERSION', `frame version ${header[0]} is not supported (supported: ${PROTOCOL_VERSION})`);
  }
  const type = header[1]!;
  if (messageName(type) === undefined) {
    throw new ProtocolError('UNKNOWN_MESSAGE_TYPE', `unknown message type 0x${type.toString(16).padStart(2, '0')}`);
  }
  const length = ((header[2]! << 24) >>> 0) + (header[3]! << 16) + (header[4]! << 8) + header[5]!;
  if (length > maxFrameBytes) {
    throw new ProtocolError('FRAME_TOO_LARGE', `frame payload of ${length} bytes exceeds the maximum of ${maxFrameBytes}`);
  }
  return { type, length };
}

/** Decodes and validates a payload of a known type. @throws ProtocolError */
function readPayload(type: number, payload: Uint8Array): Message {
  const name = messageName(type)!;
  let body: unknown;
  let text: string;
  try {
    text = utf8.decode(payload);
    body = JSON.parse(text);
  } catch {
    throw new ProtocolError('MALFORMED_FRAME', `${name} payload is not valid UTF-8 JSON (without a byte order mark)`);
  }
  if (hasDuplicateKey(text, body)) throw new ProtocolError('MALFORMED_FRAME', `${name} payload has an object with a duplicate key`);
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new ProtocolError('MALFORMED_FRAME', `${name} payload is not a JSON object`);
  }
  return validateBody(name, body) as Message;
}

/**
 * Decodes exactly one frame from `bytes`.
 * @throws ProtocolError for anything but one whole, valid frame
 */
export function decodeFrame(bytes: Uint8Array, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): Message {
  const decoder = new FrameDecoder(maxFrameBytes);
  const out = decoder.push(bytes);
  decoder.end();
  if (out.length !== 1) throw new ProtocolError('MALFORMED_FRAME', `expected one frame, found ${out.length}`);
  return out[0]!;
}

/**
 * Turns a byte stream into messages, whatever the chunking: a frame split over many chunks,
 * or many frames in one. Keeps chunks in a list so that a frame trickled a byte at a time costs
 * linear, not quadratic, copying. After the first error it stays failed.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private pending: { type: number; length: number } | undefined;
  private failure: ProtocolError | undefined;

  constructor(readonly maxFrameBytes = DEFAULT_MAX_FRAME_BYTES) {}

  /** Bytes received but not yet part of a whole frame. */
  get bufferedBytes(): number {
    // A header already read counts too: its frame is not whole yet.
    return this.buffered + (this.pending ? HEADER_BYTES : 0);
  }

  /**
   * Adds bytes; returns the whole frames they complete. `chunk` is not kept (the caller may reuse
   * its buffer): what it holds of a frame not yet whole is copied. @throws ProtocolError
   */
  push(chunk: Uint8Array): Message[] {
    if (this.failure) throw this.failure;
    if (chunk.length > 0) {
      this.chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
      this.buffered += chunk.length;
    }
    const out: Message[] = [];
    try {
      for (;;) {
        if (!this.pending) {
          if (this.buffered < HEADER_BYTES) break;
          this.pending = readHeader(this.take(HEADER_BYTES), this.maxFrameBytes);
        }
        if (this.buffered < this.pending.length) break;
        const { type, length } = this.pending;
        this.pending = undefined;
        out.push(readPayload(type, this.take(length)));
      }
    } catch (e) {
      this.failure = e instanceof ProtocolError ? e : new ProtocolError('MALFORMED_FRAME', String(e));
      this.chunks = [];
      this.buffered = 0;
      throw this.failure;
    }
    // Frames are read from `chunk` itself (no copy on the way in); what is left of it, the last
    // chunk held (older bytes are always taken first), is copied: the caller reuses its buffer.
    if (Math.min(chunk.length, this.buffered) > 0) this.chunks[this.chunks.length - 1] = Buffer.from(this.chunks[this.chunks.length - 1]!);
    return out;
  }

  /** The stream has ended. @throws ProtocolError TRUNCATED_FRAME when it ended inside a frame */
  end(): void {
    if (this.failure) throw this.failure;
    if (this.pending || this.buffered > 0) {
      throw new ProtocolError('TRUNCATED_FRAME', `stream ended inside a frame (${this.bufferedBytes} bytes buffered)`);
    }
  }

  private take(n: number): Buffer {
    // A zero-length payload may arrive when no chunk is left (the header ended the last one).
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let filled = 0;
      while (filled < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - filled);
        c.copy(out, filled, 0, k);
        filled += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    return out;
  }
}
