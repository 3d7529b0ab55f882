/**
 * TCP agents for HAProxy: one process serving many loopback TCP ports, each standing for one
 * backend. HAProxy's plain `check` connects and closes (a layer-4 check); its `agent-check`
 * connects to the same port and reads one line, which this answers with the reply set for
 * that port ("up 75%" by default, "drain" for a graceful stop), then closes.
 * Driven over IPC like the agent farm; SIGKILL of this process is the crash.
 */
import { createServer, type Server } from 'node:net';

export type TcpRequest =
  | { id: number; cmd: 'start'; count: number; ports?: number[]; reply?: string }
  | { id: number; cmd: 'set'; index: number; reply: string }
  | { id: number; cmd: 'stop' };
export type TcpReply = { id: number; ok: boolean; error?: string; ports?: number[] };

const servers: Server[] = [];
const replies: string[] = [];

function listen(index: number, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer((sock) => {
      sock.on('error', () => {});
      sock.end(`${replies[index]}\n`);
    });
    srv.on('error', reject);
    srv.listen({ host: '127.0.0.1', port, backlog: 511 }, () => {
      srv.off('error', reject);
      srv.on('error', () => {});
      resolve((srv.address() as { port: number }).port);
    });
    servers[index] = srv;
  });
}

process.on('message', (m: TcpRequest) => {
  void (async () => {
    try {
      if (m.cmd === 'start') {
        const ports: number[] = [];
        for (let i = 0; i < m.count; i++) {
          replies[i] = m.reply ?? 'up 75%';
          ports.push(await listen(i, m.ports?.[i] ?? 0));
        }
        process.send!({ id: m.id, ok: true, ports });
      } else if (m.cmd === 'set') {
        replies[m.index] = m.reply;
        process.send!({ id: m.id, ok: true });
      } else if (m.cmd === 'stop') {
        await Promise.all(servers.map((s) => new Promise((r) => s.close(() => r(undefined)))));
        process.send!({ id: m.id, ok: true });
        process.exit(0);
      }
    } catch (e) {
      process.send!({ id: m.id, ok: false, error: String(e) });
    }
  })();
});
process.on('disconnect', () => process.exit(0));
