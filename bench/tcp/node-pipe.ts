/**
 * A reference point for the TCP benchmark: the smallest Node TCP proxy (socket.pipe both ways,
 * round-robin over the targets, no checks, no limits, no timeouts). What qhcp's tcp-proxy costs
 * beyond Node's own sockets is the difference between the two rows.
 * argv[2]: JSON { hello: number[], source: number[] }. Prints one JSON line with the two ports.
 */
import { createServer, connect } from 'node:net';

const ports = JSON.parse(process.argv[2]!) as { hello: number[]; source: number[] };

function proxy(targets: number[]): Promise<number> {
  let next = 0;
  const srv = createServer((c) => {
    const u = connect(targets[next++ % targets.length]!, '127.0.0.1');
    c.pipe(u);
    u.pipe(c);
    c.on('error', () => u.destroy());
    u.on('error', () => c.destroy());
  });
  return new Promise((r) => srv.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () => r((srv.address() as { port: number }).port)));
}

process.stdout.write(`${JSON.stringify({ hello: await proxy(ports.hello), source: await proxy(ports.source) })}\n`);
