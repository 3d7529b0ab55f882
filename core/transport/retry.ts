/**
 * Stateless retry tokens (RFC 9000 section 8.1.2). A server that has not seen a client's address
 * answers its first Initial with a Retry carrying a token; the client repeats its Initial with the
 * token, proving it receives at its address. Our tokens are:
 *
 *   magic (1) | expiry, ms since the epoch (6) | odcid length (1) | odcid | HMAC-SHA256 (16)
 *
 * The HMAC (key made per process) covers the bytes before it, the connection id the Retry told
 * the client to use, and the client's address and port. So a token is refused when it is
 * replayed from another address or port, with another connection id, or after it expires; and
 * a `TokenLedger` makes each token good for one connection only. Replayed Initials therefore
 * cannot hold handshake slots (issue 13, item 7).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

const MAGIC = 0x71;
const MAC_BYTES = 16;
/** How long a Retry token is good for (ms); a client repeats its Initial within one round trip. */
export const RETRY_TOKEN_LIFETIME_MS = 10_000;

export class RetryTokens {
  private readonly key: Buffer;

  constructor(
    readonly lifetimeMs = RETRY_TOKEN_LIFETIME_MS,
    key: Buffer = randomBytes(32),
  ) {
    this.key = key;
  }

  private mac(head: Uint8Array, scid: Uint8Array, host: string, port: number): Buffer {
    const h = createHmac('sha256', this.key);
    h.update(head);
    h.update(scid);
    h.update(`${host}|${port}`);
    return h.digest().subarray(0, MAC_BYTES);
  }

  /** A token for a client at host:port whose first Initial had `odcid`, told to use `scid`. */
  mint(odcid: Uint8Array, scid: Uint8Array, host: string, port: number, now = Date.now()): Buffer {
    const head = Buffer.allocUnsafe(8 + odcid.length);
    head[0] = MAGIC;
    head.writeUIntBE(now + this.lifetimeMs, 1, 6);
    head[7] = odcid.length;
    head.set(odcid, 8);
    return Buffer.concat([head, this.mac(head, scid, host, port)]);
  }

  /**
   * The original destination connection id inside `token`, or a reason it is refused.
   * `scid` is the destination connection id of the Initial that carried it.
   */
  check(token: Uint8Array, scid: Uint8Array, host: string, port: number, now = Date.now()): { odcid: Buffer } | { refused: string } {
    if (token.length < 8 + MAC_BYTES || token[0] !== MAGIC) return { refused: 'not our token' };
    const b = Buffer.from(token.buffer, token.byteOffset, token.byteLength);
    const n = b[7]!;
    if (n > 20 || b.length !== 8 + n + MAC_BYTES) return { refused: 'not our token' };
    const head = b.subarray(0, 8 + n);
    const mac = b.subarray(8 + n);
    if (!timingSafeEqual(mac, this.mac(head, scid, host, port))) return { refused: 'token does not match this address or connection id' };
    const expiry = b.readUIntBE(1, 6);
    if (now >= expiry) return { refused: 'token expired' };
    if (expiry - now > this.lifetimeMs) return { refused: 'token from the future' };
    return { odcid: Buffer.from(b.subarray(8, 8 + n)) };
  }
}

/**
 * Tokens already spent on a connection, until they expire: a token starts one connection only.
 * Bounded: entries leave when their token expires; when `max` unexpired tokens are held, new
 * ones are refused (the server is then accepting over max / lifetime handshakes per second).
 */
export class TokenLedger {
  private readonly spent = new Map<string, number>();

  constructor(private readonly max = 65_536) {}

  get size(): number {
    return this.spent.size;
  }

  /** Records `id` as spent until `expiresAt`; false when it was spent already (or the ledger is full). */
  spend(id: string, expiresAt: number, now = Date.now()): boolean {
    this.prune(now);
    if (this.spent.has(id)) return false;
    if (this.spent.size >= this.max) return false;
    this.spent.set(id, expiresAt);
    return true;
  }

  private prune(now: number): void {
    // Insertion order is nearly expiry order (one lifetime for all tokens): stop at the first live one.
    for (const [id, at] of this.spent) {
      if (at > now) break;
      this.spent.delete(id);
    }
  }
}

/** The expiry written in a token we minted (ms since the epoch), or 0. */
export function tokenExpiry(token: Uint8Array): number {
  if (token.length < 8 || token[0] !== MAGIC) return 0;
  return Buffer.from(token.buffer, token.byteOffset, token.byteLength).readUIntBE(1, 6);
}
