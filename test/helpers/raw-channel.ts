/**
 * A channel that can misbehave, for tests and fuzzing of peers: it writes bytes that bypass the
 * codec and the DFA, stops reading, opens a second stream, resets the control stream. The
 * production Channel (core/transport/quic.ts) carries none of this; `connectRaw` builds this
 * subclass through connect()'s tests-only `channelType`.
 */
import { Channel, connect, type ConnectOptions } from '../../core/transport/quic.ts';
import { quiche } from '../../core/transport/driver.ts';
import { LocalError } from '../../core/errors.ts';

export class RawChannel extends Channel {
  private nextLocalStream = 4;

  /** Writes bytes as they are, bypassing codec and DFA. */
  async sendRaw(bytes: Uint8Array): Promise<void> {
    if (this.streamId === undefined) throw new LocalError('QHCP_ERR_CLOSED', 'no control stream');
    if (this.closed) return;
    return this.write(Buffer.from(bytes));
  }

  /** Stops reading the control stream for good (a peer that never reads its answers). */
  pauseReading(): void {
    this.readStopped = true;
  }

  /** Reads again after pauseReading (a slow reader catching up). */
  resumeReading(): void {
    this.readStopped = false;
    if (this.streamId === undefined || this.closed) return;
    this.readControl(this.streamId);
    // Send the flow-control credit the read freed.
    this.conn.ep.touch(this.conn);
  }

  /** Opens another bidirectional stream and writes `bytes` on it (EXTRA_STREAM). */
  async openExtraStream(bytes: Uint8Array): Promise<void> {
    const id = this.nextLocalStream;
    this.nextLocalStream += 4;
    try {
      this.conn.q.streamSend(id, bytes, false);
    } catch {
      /* the peer allows no more streams, or the connection is going away */
    }
    this.conn.ep.touch(this.conn);
  }

  /** Resets the control stream's sending side (RESET_STREAM), e.g. inside a frame. */
  async resetStream(): Promise<void> {
    if (this.streamId === undefined) return;
    this.dropOut();
    try {
      this.conn.q.streamShutdown(this.streamId, quiche.Shutdown.Write, 0);
    } catch {
      /* already closed */
    }
    this.conn.ep.touch(this.conn);
  }
}

/** connect() with a RawChannel. */
export async function connectRaw(opts: ConnectOptions): Promise<RawChannel> {
  return (await connect({ ...opts, channelType: RawChannel })) as RawChannel;
}
