/**
 * `qhcp drain --wait-port`: counting a service's established connections from the kernel's
 * socket tables (core/control/connections.ts), on a table written here and on this host's own.
 */
import { expect } from 'chai';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, connect, type Socket } from 'node:net';
import { countEstablished, establishedTo, parsePorts, waitForNoConnections } from '../core/control/connections.ts';
import { LocalError } from '../core/errors.ts';

// /proc/net/tcp as Linux writes it: port 8080 is 1F90; st 01 established, 0A listen, 06 time-wait.
const TABLE = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:C351 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000
   4: 0100007F:20FB 0100007F:C352 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 20 4 30 10 -1
`;
const TABLE6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 20 4 30 10 -1
`;

describe('control: counting a service\'s connections (--wait-port)', () => {
  it('counts established connections whose local port is asked for; not listeners, time-wait, or the client side', () => {
    expect(countEstablished(TABLE, new Set([8080]))).to.equal(1);
    expect(countEstablished(TABLE, new Set([8080, 8443]))).to.equal(2);
    expect(countEstablished(TABLE6, new Set([8080]))).to.equal(1);
    expect(countEstablished('garbage\n\n1: x y 01', new Set([8080]))).to.equal(0);
  });

  it('adds up every table that exists, and says clearly when none does', () => {
    const dir = mkdtempSync(join(tmpdir(), 'qhcp-tables-'));
    try {
      writeFileSync(join(dir, 'tcp'), TABLE);
      writeFileSync(join(dir, 'tcp6'), TABLE6);
      expect(establishedTo(new Set([8080]), [join(dir, 'tcp'), join(dir, 'tcp6'), join(dir, 'absent')])).to.equal(2);
      expect(() => establishedTo(new Set([8080]), [join(dir, 'absent')])).to.throw(LocalError, /Linux only/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('parses a port list, refusing anything else', () => {
    expect(parsePorts('8080')).to.deep.equal([8080]);
    expect(parsePorts('8080, 8443,8080')).to.deep.equal([8080, 8443]);
    for (const bad of ['', '0', '65536', '80a', '8080,,8443', '-1', '1e3']) expect(() => parsePorts(bad), bad).to.throw(LocalError, /--wait-port/);
  });

  it("sees this host's real connections come and go (Linux)", async function () {
    if (process.platform !== 'linux') this.skip();
    const server = createServer((s) => s.on('error', () => undefined));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as { port: number }).port;
    const c: Socket = connect(port, '127.0.0.1');
    await new Promise<void>((r) => c.once('connect', () => r()));
    try {
      expect(establishedTo(new Set([port]))).to.equal(1);
      const seen: number[] = [];
      setTimeout(() => c.destroy(), 100);
      const w = await waitForNoConnections([port], 10_000, (n) => seen.push(n), { everyMs: 20 });
      expect(w.left).to.equal(0);
      expect(seen[0]).to.equal(1);
      expect(seen.at(-1)).to.equal(0);
    } finally {
      c.destroy();
      await new Promise((r) => server.close(r));
    }
  });
});
