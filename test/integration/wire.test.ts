/**
 * The wire as an independent dissector sees it: tshark (Wireshark's QUIC and TLS dissectors)
 * captures a QHCP exchange on loopback between our listener and a client on the load balancer's
 * kind of shared socket (with receive moderation), and must find QUIC version 1, TLS 1.3, ALPN
 * qhcp/1, the max_ack_delay each side announces (docs/protocol.md, Transport), and nothing in
 * clear: without the TLS key log no QHCP byte is readable; with it, the stream carries QHCP
 * frames our codec decodes. Capturing needs tshark and root (CI installs tshark and runs as root).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { Listener, connect, ClientSocket, ACK_DELAY_MS, ALPN, type Channel } from '../../core/transport/quic.ts';
import { selfSigned } from '../../core/transport/tls.ts';
import { FrameDecoder } from '../../core/protocol/codec.ts';
import type { Message } from '../../core/protocol/messages.ts';
import { waitUntil } from '../helpers/procs.ts';

const MARKER = 'wire-marker-7f3a';
const HOLD_MS = 10;

function tsharkUsable(): string | undefined {
  const v = spawnSync('tshark', ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (v.error || v.status !== 0) return 'tshark is not installed (.ci/run installs it)';
  if (process.getuid?.() !== 0) return 'capturing on lo needs root';
  return undefined;
}

/** Fields of every QUIC packet in `pcap`, one row per frame (tshark -T fields, '|' separated, multi-values ','). */
function fields(pcap: string, names: string[], keylog?: string): Array<Record<string, string>> {
  const args = ['-r', pcap, '-Y', 'udp', '-T', 'fields', '-E', 'separator=|', '-E', 'occurrence=a', '-E', 'aggregator=,'];
  if (keylog) args.push('-o', `tls.keylog_file:${keylog}`);
  for (const n of names) args.push('-e', n);
  const r = spawnSync('tshark', args, { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`tshark -r failed: ${r.stderr}`);
  return r.stdout
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => Object.fromEntries(l.split('|').map((v, i) => [names[i]!, v])));
}

describe('the wire as tshark sees it (QUIC v1, TLS 1.3, ALPN qhcp/1, nothing in clear)', function () {
  this.timeout(60_000);
  let dir: string;
  let pcap: string;
  let keylog: string;
  let serverPort = 0;
  let clientPort = 0;
  const names = ['frame.number', 'udp.srcport', 'udp.length', 'quic.version', 'quic.header_form', 'tls.handshake.type', 'tls.handshake.extensions_alpn_str', 'tls.handshake.extensions.supported_version', 'tls.quic.parameter.max_ack_delay', 'quic.stream.stream_id', 'quic.stream_data'];

  before(async function () {
    const why = tsharkUsable();
    if (why) {
      if (process.env.CI) throw new Error(why);
      this.skip();
    }
    dir = mkdtempSync(join(tmpdir(), 'qhcp-wire-'));
    pcap = join(dir, 'qhcp.pcapng');
    const tls = await selfSigned(['127.0.0.1']);
    let capture: ChildProcess | undefined;
    let listener: Listener | undefined;
    let socket: ClientSocket | undefined;
    let ch: Channel | undefined;
    try {
      // Our agent side: answers HEALTH_REQUEST with a HEALTH_RESPONSE carrying a marker metric.
      listener = await Listener.listen({
        host: '127.0.0.1',
        port: 0,
        cert: tls.cert,
        key: tls.key,
        logKeys: join(dir, 'server.keys'),
        // One Initial: after a Retry the dissector takes the second ClientHello for a retransmission
        // and never learns the client random the key log names.
        loopbackWithoutRetry: true,
        onChannel: (sch) =>
          sch.setHandler({
            message: (m) => {
              if (m.type === 'HEALTH_REQUEST') void sch.send({ type: 'HEALTH_RESPONSE', body: { seq: m.body.seq, metrics: { [MARKER]: 1 }, ageMs: 0, verdict: 'SERVING', admin: 'READY', weight: 100 } });
            },
            protocolError: () => {},
            ended: () => {},
            closed: () => {},
          }),
      });
      serverPort = listener.port;
      capture = spawn('tshark', ['-i', 'lo', '-f', `udp port ${serverPort}`, '-w', pcap, '-P', '-l'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let printed = '';
      capture.stdout!.on('data', (d) => (printed += String(d)));
      capture.stderr!.resume();
      // Capture is live once a datagram we send shows up in it (a 1-byte sentinel, not QUIC: the listener drops it).
      const u = createSocket('udp4');
      try {
        await waitUntil(
          async () => {
            u.send(Buffer.from('x'), serverPort, '127.0.0.1');
            await new Promise((r) => setTimeout(r, 50));
            return /Len=1/.test(printed);
          },
          20_000,
          'tshark capturing',
          0,
        );
      } finally {
        u.close();
      }
      // The load balancer's kind of client: a shared socket with receive moderation (announced in max_ack_delay).
      socket = await ClientSocket.open('127.0.0.1', { holdMs: HOLD_MS });
      ch = await connect({ host: '127.0.0.1', port: serverPort, ca: tls.cert, socket, logKeys: join(dir, 'client.keys') });
      clientPort = socket.port;
      const got: Message[] = [];
      ch.setHandler({ message: (m) => got.push(m), protocolError: () => {}, ended: () => {}, closed: () => {} });
      await ch.send({ type: 'HEALTH_REQUEST', body: { seq: 7 } });
      await waitUntil(() => got.length === 1, 10_000, 'the answer');
      await ch.close(0, 'done');
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      await ch?.close(0, 'done').catch(() => {});
      await socket?.close();
      await listener?.stop();
      if (capture && capture.exitCode === null) {
        const exited = new Promise((r) => capture!.once('exit', r));
        capture.kill('SIGINT');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
        if (capture.exitCode === null) capture.kill('SIGKILL');
      }
    }
    keylog = join(dir, 'all.keys');
    writeFileSync(keylog, readFileSync(join(dir, 'client.keys'), 'utf8') + readFileSync(join(dir, 'server.keys'), 'utf8'));
    expect(existsSync(pcap), 'the capture file').to.equal(true);
  });

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('every datagram of the exchange is QUIC version 1; the handshake is TLS 1.3 with ALPN qhcp/1 both ways', () => {
    const rows = fields(pcap, names, keylog).filter((r) => r['udp.length'] !== '9'); // the 1-byte sentinels (8-byte UDP header + 1)
    expect(rows.length, 'datagrams of the exchange').to.be.greaterThan(4);
    for (const r of rows) expect(r['quic.header_form'], `frame ${r['frame.number']} dissected as QUIC`).to.not.equal('');
    const long = rows.filter((r) => r['quic.version']);
    expect(long.length, 'long-header packets').to.be.greaterThan(1);
    for (const r of long) for (const v of r['quic.version']!.split(',')) expect(v).to.equal('0x00000001');
    const hello = (type: string, port: number) => rows.find((r) => r['tls.handshake.type']!.split(',').includes(type) && Number(r['udp.srcport']) === port);
    const ch = hello('1', clientPort);
    const sh = hello('2', serverPort);
    expect(ch, 'ClientHello from the client').to.not.equal(undefined);
    expect(sh, 'ServerHello from the server').to.not.equal(undefined);
    expect(ch!['tls.handshake.extensions_alpn_str']).to.equal(ALPN);
    expect(ch!['tls.handshake.extensions.supported_version']!.split(',')).to.deep.equal(['0x0304']);
    // The server's EncryptedExtensions (decrypted with the key log) answer with the same ALPN and TLS 1.3.
    expect(sh!['tls.handshake.extensions_alpn_str']).to.equal(ALPN);
    expect(sh!['tls.handshake.extensions.supported_version']).to.equal('0x0304');
  });

  it('max_ack_delay: the agent side announces ACK_DELAY_MS; a client on a moderated socket adds its hold', () => {
    const rows = fields(pcap, names, keylog);
    const announced = (port: number) => rows.find((r) => Number(r['udp.srcport']) === port && r['tls.quic.parameter.max_ack_delay'])?.['tls.quic.parameter.max_ack_delay'];
    expect(Number(announced(serverPort))).to.equal(ACK_DELAY_MS);
    expect(Number(announced(clientPort))).to.equal(ACK_DELAY_MS + HOLD_MS);
  });

  it('with the key log the stream carries QHCP frames our codec decodes; without it nothing is readable', () => {
    const decrypted = fields(pcap, names, keylog).filter((r) => r['quic.stream_data']);
    const decode = (port: number): Message[] => {
      const dec = new FrameDecoder(1 << 20);
      const out: Message[] = [];
      for (const r of decrypted.filter((x) => Number(x['udp.srcport']) === port)) for (const hex of r['quic.stream_data']!.split(',')) out.push(...dec.push(Buffer.from(hex, 'hex')));
      return out;
    };
    expect(decode(clientPort).map((m) => m.type)).to.deep.equal(['HEALTH_REQUEST']);
    const answers = decode(serverPort);
    expect(answers.map((m) => m.type)).to.deep.equal(['HEALTH_RESPONSE']);
    expect((answers[0] as Extract<Message, { type: 'HEALTH_RESPONSE' }>).body.metrics).to.have.property(MARKER, 1);
    // Without keys: the dissector decrypts no stream, and the raw capture holds none of the plaintext.
    expect(fields(pcap, names).filter((r) => r['quic.stream_data'] || r['tls.quic.parameter.max_ack_delay'] && Number(r['udp.srcport']) === serverPort)).to.deep.equal([]);
    const raw = readFileSync(pcap);
    for (const clear of [MARKER, '{"seq":7}', 'HEALTH', '"verdict"']) expect(raw.includes(Buffer.from(clear)), `"${clear}" in clear on the wire`).to.equal(false);
  });
});
