/**
 * The benchmark's TCP backends, in their own process: `count` backends, each with a "hello"
 * port (writes "ok\n" and ends: one connection = one short exchange) and a "source" port
 * (streams `sourceMb` MiB and ends: throughput). Prints one JSON line with the ports.
 */
import { createServer, type Socket } from 'node:net';

const count = Number(process.argv[2] ?? 3);
const sourceMb = Number(process.argv[3] ?? 64);
const block = Buffer.alloc(256 * 1024, 120);

function listen(onConn: (s: Socket) => void): Promise<number> {
  const srv = createServer(onConn);
  srv.maxConnections = 20_000;
  return new Promise((r) => srv.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () => r((srv.address() as { port: number }).port)));
}

const hello: number[] = [];
const source: number[] = [];
for (let i = 0; i < count; i++) {
  hello.push(
    await listen((s) => {
      s.on('error', () => {});
      s.end('ok\n');
    }),
  );
  source.push(
    await listen((s) => {
      s.on('error', () => {});
      let left = sourceMb * 4;
      const push = () => {
        while (left > 0) {
          left--;
          if (!s.write(block)) return void s.once('drain', push);
        }
        s.end();
      };
      push();
    }),
  );
}
process.stdout.write(`${JSON.stringify({ hello, source })}\n`);
